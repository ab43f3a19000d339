"""Benchmark children forked from one process per framework that imported it once.

    python -m pipeline.measure.zygote --framework torch      (started by Zygotes; one request per stdin line)

A child started from nothing pays the interpreter's start and the framework's and the project's imports: 1.7 s for
PyTorch and 4.4 s for TensorFlow on the 2-core CPU this was built on, 3.3 s for PyTorch with CUDA's start on an H200
host; a default bench starts 18 children. A zygote pays the imports once: it imports the framework's backend, the
child's code and what the framework imports only on first use (`preload`), runs nothing (no op, no device, no thread
pool of its own), and forks one child per request. Each
child is still a fresh process for everything it measures: its device context (CUDA starts in the child, as PyTorch
requires of a fork), memory, compiled code, caches and framework thread pools are made after the fork; what it
shares, copy-on-write, is imported and unused code. It runs child.main exactly as `python -m pipeline.measure.child`
would, its stdout and stderr going to files the bench reads when it ends.

A framework whose import calls into CUDA's runtime (its registry entry says so: `forks_on_gpu`) cannot be forked
where a GPU is visible, since CUDA touched before a fork fails in the child: its children start from nothing there
(`forks`), as every child does off Linux and with `bench.fork: false`. `spawn` runs one child either way and reads
its measurements back.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

from pipeline import backends, files
from pipeline.errors import ChildError, Terminated
from pipeline.records import Measurement

READY = "ready"


def forks(framework: str, gpu_visible: bool) -> bool:
    """Whether `framework`'s children may be forked from its zygote: on Linux only (macOS's system libraries are
    not safe to use after a fork, Windows has none), and not where a GPU is visible for a framework whose import
    touches CUDA (its registry entry says: `forks_on_gpu`)."""
    return sys.platform == "linux" and (backends.about(framework).forks_on_gpu or not gpu_visible)


def preload(framework: str) -> None:
    """Everything a child imports, imported once: the framework's backend, the child's code, and the modules the
    framework would import only on first use (`Backend.LAZY_IMPORTS`; for PyTorch, TorchDynamo, which torch.optim
    imports when an optimizer is made). One this version of the framework lacks is skipped: nothing imports it."""
    cls = backends.backend_class(framework)
    importlib.import_module("pipeline.measure.child")
    for name in cls.LAZY_IMPORTS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def serve(framework: str) -> None:
    """The zygote: import, say ready, then per request line fork a child and answer with its exit status."""
    with os.fdopen(os.dup(1), "w", buffering=1) as answers:  # the replies' own descriptor: whatever an
        os.dup2(2, 1)                                          # import or warning prints goes to stderr instead
        # Ctrl-C reaches the children through the process group; the zygote waits for its child and is ended by
        # its bench (stdin closed, or SIGTERM, which it passes on to the child: `Stop`)
        inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
        preload(framework)
        from pipeline.measure import child
        print(READY, file=answers)
        stop = Stop()
        for line in stop.reading(sys.stdin):
            req = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            # the child's temporary files go here, removed when it ends: it exits without running atexit handlers
            # (they are the zygote's too), and TensorFlow deletes its autograph sources in one
            tmp = tempfile.mkdtemp(prefix="mnist-bench-child-tmp-")
            with warnings.catch_warnings():  # Python warns of forking with threads: here only the idle pools
                warnings.simplefilter("ignore", DeprecationWarning)  # the imports started; the child makes its own
                pid = os.fork()
            if pid == 0:
                for s in files.STOPS:  # the child's own stage wrapper handles its stops, not the zygote's
                    signal.signal(s, signal.SIG_DFL)
                signal.signal(signal.SIGINT, inherited)  # the child stops at Ctrl-C (unless the bench ignores it)
                tempfile.tempdir = os.environ["TMPDIR"] = tmp
                _child(child.main, req, answers.fileno())
            status = stop.wait(pid)
            shutil.rmtree(tmp, ignore_errors=True)  # the child has ended, whatever ended it: its directory goes
            stop.check()
            print(os.waitstatus_to_exitcode(status), file=answers)


class Stop:
    """The zygote's SIGTERM and SIGHUP (its bench was stopped): between children it stops at once; while a child
    runs the signal is passed on to it, the zygote waits for it and removes its files, and stops after that. So no
    child outlives its zygote, and no clean-up is cut short halfway (a signal raised inside rmtree would leave half
    a directory behind)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.busy = False
        self.signum = 0
        for s in files.STOPS:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        if not self.busy:
            raise Terminated(signum)
        if self.pid:
            with contextlib.suppress(ProcessLookupError):  # it ended and was reaped just now
                os.kill(self.pid, signal.SIGTERM)

    def reading(self, lines: Iterator[str]) -> Iterator[str]:
        """The requests; a stop while waiting for one ends the zygote there."""
        for line in lines:
            self.busy = True  # from here until the child is gone and its files removed
            yield line
            self.busy = False
            self.check()

    def wait(self, pid: int) -> int:
        """The child's wait status; a stop that came before the child's pid was known is passed on now."""
        self.pid = pid
        if self.signum:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        status = os.waitpid(pid, 0)[1]  # retried after a signal's handler has run (PEP 475)
        self.pid = None
        return status

    def check(self) -> None:
        if self.signum:
            raise Terminated(self.signum)


def _child(main: Callable[[list[str]], None], req: dict, answers: int) -> None:
    """In the forked child: stdout and stderr to the request's files, stdin and the replies closed, child.main
    run as a stage is, then exit with its status without returning into the zygote's loop."""
    code = 1
    try:
        os.close(answers)  # the bench must see the zygote end if it does, not wait on this child's copy
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["child", *req["argv"]]
        try:
            files.run(main, quiet_interrupt=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fresh(cmd: list[str]) -> tuple[int, str, str]:
    """Run a child started from nothing. Interrupted, the bench sends it SIGTERM (which may have reached the bench
    alone) and waits for it to stop as a stage stops, its temporary files removed; one that hangs is killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return proc.returncode, out, err


class Zygotes:
    """One bench run's way of starting children: forked from one zygote per framework (started when first
    needed, ended with the run), or a new interpreter each (`fork` false, or `forks` says no)."""

    def __init__(self, fork: bool, gpu_visible: bool):
        self.fork, self.gpu_visible = fork, gpu_visible
        self._procs: dict[str, subprocess.Popen] = {}
        self._stack = ExitStack()
        self._dir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="mnist-bench-child-")))

    def forked(self, framework: str) -> bool:
        return self.fork and forks(framework, self.gpu_visible)

    def run(self, framework: str, argv: list[str]) -> tuple[int, str, str]:
        """Run `python -m pipeline.measure.child *argv` as a fresh process: (exit status, stdout, stderr)."""
        if not self.forked(framework):
            return _fresh([sys.executable, "-m", "pipeline.measure.child", *argv])
        proc = self.start(framework)
        out, err = self._dir / "stdout", self._dir / "stderr"
        proc.stdin.write(json.dumps({"argv": argv, "out": str(out), "err": str(err)}) + "\n")
        proc.stdin.flush()
        status = proc.stdout.readline()
        if not status:
            raise ChildError(f"the {framework} zygote (pipeline.measure.zygote) ended while a child ran; "
                             "its error is printed above")
        return int(status), out.read_text(), err.read_text()

    def start(self, framework: str) -> subprocess.Popen | None:
        """`framework`'s zygote, started (and its imports done) on first need; None where children start anew."""
        if not self.forked(framework):
            return None
        if framework in self._procs:
            return self._procs[framework]
        # stderr is the bench's: the framework's import messages show once, not once per child
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.measure.zygote", "--framework", framework],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._procs[framework] = proc
        if proc.stdout.readline().strip() != READY:
            raise ChildError(f"the {framework} zygote (pipeline.measure.zygote) failed to start; its error is "
                             "printed above")
        return proc

    def close(self, stop: bool = False) -> None:
        """End every zygote (its stdin closes, its loop ends) and remove the children's files. `stop`: the bench is
        being interrupted, and a SIGTERM may have reached it alone: each zygote is sent one too, and stops its
        child (Ctrl-C reached the child already)."""
        for proc in self._procs.values():
            if stop and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.stdin.close()
            except OSError:  # it has ended already
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._procs.clear()
        self._stack.close()

    def __enter__(self) -> "Zygotes":
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(stop=kind is not None and issubclass(kind, KeyboardInterrupt))


def spawn(via: Zygotes, data: Path, params_path: Path, framework: str, kind: str, threads: int, label: str,
          batch_size: int | None = None, calm_gflops: float = 0.0) -> list[Measurement]:
    """Run one child in a fresh process (`via`: forked from its framework's zygote, or a new interpreter); its
    measurements come back on stdout, its stderr is passed on when it ends (tracebacks stay visible) and a failed
    child fails the bench in one line naming it. On Ctrl-C the child ends with the bench and its stderr is dropped,
    so the bench's one line is all that shows."""
    argv = ["--data", str(data), "--params", str(params_path), "--framework", framework, "--kind", kind,
            "--threads", str(threads)]
    argv += ["--batch-size", str(batch_size)] if batch_size else []  # a bench.vary arm: another training batch
    argv += ["--calm-gflops", repr(calm_gflops)] if calm_gflops else []  # the run's calm speed so far
    via.start(framework)  # the zygote's own imports, once per bench: not part of this child's time
    t0 = time.perf_counter()
    argv += ["--launched", repr(time.time())]  # the child's start-up is timed from here, on the same clock
    code, out, err = via.run(framework, argv)
    wall = time.perf_counter() - t0
    sys.stderr.write(err)
    if code:
        raise ChildError(f"bench child {label} failed (exit {code}); its error is printed above")
    rows = [Measurement.from_flat(r) for r in json.loads(out.strip().splitlines()[-1])]
    for r in rows:
        r.child_wall_s, r.child_forked = wall, via.forked(framework)
    return rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", required=True, choices=backends.FRAMEWORKS)
    serve(ap.parse_args(argv).framework)


if __name__ == "__main__":
    files.run(main, quiet_interrupt=True)  # the bench says it once
