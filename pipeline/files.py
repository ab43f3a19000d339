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


def cause(e: OSError) -> str:
    """The OS's reason in the line's lower case: no space left on device, permission denied, read-only file
    system."""
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


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
        raise DataError(f"{path}: cannot write ({cause(e)})") from None
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


# The child processes a stage had when it was asked to stop: it returns only once every one of them has ended.
_AT_STOP: list = []


def _descendants() -> list:
    """This process's children and theirs (psutil processes)."""
    import psutil
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _stop(signum: int, frame: object) -> None:
    for s in STOPS:
        signal.signal(s, signal.SIG_IGN)  # one stop: a second request must not cut the clean-up short
    _AT_STOP[:] = _descendants()
    raise Terminated(signum)


def _ctrl_c(signum: int, frame: object) -> None:
    _AT_STOP[:] = _descendants()
    raise KeyboardInterrupt


def end_children(heard: bool, grace_s: float = 30.0) -> int:
    """Wait for every process this one had when stopped, and any it still has, to end. Those that `heard` the stop
    (Ctrl-C reaches the whole process group) get a few seconds to stop by themselves; then, or at once where the stop
    reached this process alone (`kill`, a scheduler), each is sent SIGTERM and given `grace_s` to clean up, then
    SIGKILL. Returns how many there were, so the stage's one line can say they are gone."""
    import psutil
    procs = {p.pid: p for p in _AT_STOP + _descendants()}
    alive = list(procs.values())
    for how, wait in ((None, 5.0 if heard else 0.0), ("terminate", grace_s), ("kill", 5.0)):
        for p in alive if how else ():
            try:
                getattr(p, how)()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=wait)
        if not alive:
            break
    return len(procs)


def run(main: Callable[[list[str]], None], quiet_interrupt: bool = False) -> None:
    """Run a stage's main(); known input problems exit 2 with one line on stderr, no traceback; a failed
    benchmark child exits 1 with its one-line summary (its own traceback was already printed above); Ctrl-C exits
    130, SIGTERM 143 and SIGHUP 129 (128 + the signal), with one line naming the stage and the signal
    (`quiet_interrupt`: none, for a benchmark child whose bench says it), after the same clean-up. Every output is
    written atomically, so an interrupted stage leaves each file as it was before."""
    stage = Path(sys.argv[0]).stem
    before = {s: signal.getsignal(s) for s in (*STOPS, signal.SIGINT)}
    for s, handler in before.items():
        if s == signal.SIGINT and handler is signal.default_int_handler:
            signal.signal(s, _ctrl_c)  # Ctrl-C as Python has it, noting the children it found
        elif s != signal.SIGINT and handler in (signal.SIG_DFL, _stop):  # one ignored on purpose (nohup ignores
            signal.signal(s, _stop)                                      # SIGHUP) stays ignored
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt as e:
        sig = e.args[0] if isinstance(e, Terminated) else signal.SIGINT
        for s in (*STOPS, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)  # the clean-up below runs to its end
        n = end_children(heard=sig == signal.SIGINT)
        if not quiet_interrupt:
            how = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
            gone = f"; its {n} child process{'es' * (n > 1)} {'have' if n > 1 else 'has'} ended" if n else ""
            print(f"interrupted: stage {stage} stopped by {how}{gone}; nothing half-written, its previous outputs "
                  "are kept (run it again to finish)", file=sys.stderr)
        sys.exit(128 + sig)
    except (ParamsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ChildError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a write outside atomic_path (a temporary directory, a library's cache) the OS refused
        if "No usable temporary directory" in str(e):  # tempfile tried $TMPDIR, /tmp, /var/tmp, ... and the cwd
            print("error: no usable temporary directory: $TMPDIR, /tmp and the others are full or read-only; free "
                  "space there or set TMPDIR to a writable directory", file=sys.stderr)
            sys.exit(2)
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"error: {e.filename or 'a file'}: cannot write ({cause(e)})", file=sys.stderr)
        sys.exit(2)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
