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


# Requests to stop other than Ctrl-C: `kill`, `timeout`, a scheduler or CI ending the job (SIGTERM); the terminal
# closing (SIGHUP)
STOPS = (signal.SIGTERM, signal.SIGHUP)


def _stop(signum: int, frame: object) -> None:
    for s in STOPS:
        signal.signal(s, signal.SIG_IGN)  # one stop: a second request must not cut the clean-up short
    raise Terminated(signum)


def run(main: Callable[[list[str]], None], quiet_interrupt: bool = False) -> None:
    """Run a stage's main(); known input problems exit 2 with one line on stderr, no traceback; a failed
    benchmark child exits 1 with its one-line summary (its own traceback was already printed above); Ctrl-C exits
    130, SIGTERM 143 and SIGHUP 129 (128 + the signal), with one line naming the stage and the signal
    (`quiet_interrupt`: none, for a benchmark child whose bench says it), after the same clean-up. Every output is
    written atomically, so an interrupted stage leaves each file as it was before."""
    stage = Path(sys.argv[0]).stem
    before = {s: signal.getsignal(s) for s in STOPS}
    for s, handler in before.items():
        if handler in (signal.SIG_DFL, _stop):  # one ignored on purpose (nohup ignores SIGHUP) stays ignored
            signal.signal(s, _stop)
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt as e:
        sig = e.args[0] if isinstance(e, Terminated) else signal.SIGINT
        if not quiet_interrupt:
            how = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
            print(f"interrupted: stage {stage} stopped by {how}; nothing half-written, its previous outputs are "
                  "kept (run it again to finish)", file=sys.stderr)
        sys.exit(128 + sig)
    except (ParamsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ChildError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
