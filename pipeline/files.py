"""Atomic writes (old file or none, never half a file), JSON io, and the stage entry wrapper."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.errors import ChildError, DataError, ParamsError, Terminated

# OS errors that mean "this output cannot be written here"; others (a dropped connection while a download writes
# into the temp file, say) keep their own handling upstream.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    A killed or failing stage therefore leaves either the old file or nothing, never half a file. A write that
    fails at the OS level (no space, no permission, read-only) becomes a DataError naming `path` and the cause.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read and shared
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise DataError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _clean(obj: Any) -> Any:
    # JSON has no NaN/inf: write null so every reader (pandas, DVC, browsers) parses the file.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item"):  # NumPy scalar
        return _clean(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path, stage: str) -> Any:
    """Read a JSON file another stage wrote; a missing or malformed one names the file and the stage."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing; run `dvc repro {stage}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON (line {e.lineno}: {e.msg}); rerun `dvc repro {stage}`") from None


INTERRUPTED = 130  # the shell's exit status for a process ended by SIGINT (128 + 2)
TERMINATED = 143  # and by SIGTERM (128 + 15)


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop: a second SIGTERM must not cut the clean-up short
    raise Terminated()


def run(main: Callable[[list[str]], None], quiet_interrupt: bool = False) -> None:
    """Run a stage's main(); known input problems exit 2 with one line on stderr, no traceback; a failed
    benchmark child exits 1 with its one-line summary (its own traceback was already printed above); Ctrl-C exits
    130 and SIGTERM 143, with one line naming the stage (`quiet_interrupt`: none, for a benchmark child whose bench
    says it), after the same clean-up. Every output is written atomically, so an interrupted stage leaves each file
    as it was before."""
    stage = Path(sys.argv[0]).stem
    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt as e:
        how, code = ("SIGTERM", TERMINATED) if isinstance(e, Terminated) else ("Ctrl-C", INTERRUPTED)
        if not quiet_interrupt:
            print(f"interrupted: stage {stage} stopped by {how}; nothing half-written, its previous outputs are "
                  "kept (run it again to finish)", file=sys.stderr)
        sys.exit(code)
    except (ParamsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ChildError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, before)
