"""One data-parallel launch, started the way each framework runs, ended cleanly on a fault.

Each framework's engine says how its workers start (PyTorch's: one torchrun, its c10d rendezvous on
`scale.host:scale.port`; TensorFlow's: a process per worker with TF_CONFIG naming the cluster). A launch runs in a process group of its own (a terminal's Ctrl-C reaches only the
stage): when a worker dies (the others would wait on a collective), hangs past `scale.timeout_s`, or Ctrl-C arrives,
every process of the launch is killed, so no worker is left behind, and one line names the worker and why.
Nothing is written to the results then.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from pipeline import backends
from pipeline.errors import ChildError, ParamsError
from pipeline.params import Scale

POLL_S = 0.1


def check_ports(host: str, port: int, count: int) -> None:
    """Refuse ports already in use here, in one line naming them (never retried: another job holds them)."""
    for q in range(port, port + count):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-ended launch's TIME_WAIT is not "in use"
            try:
                s.bind((host, q))
            except OSError as e:
                raise ParamsError(f"params.yaml: scale.port: port {q} on {host} is in use ({e.strerror}); "
                                  "pick a free scale.port") from None


def commands(framework: str, workers: int, host: str, port: int, args: list[str]) -> list[tuple[list[str], dict]]:
    """(command, extra environment) per process of one launch: the framework's engine says how it is started."""
    return backends.engine_class(framework).commands(workers, host, port, args)


def exit_text(code: int) -> str:
    return f"{code} ({signal.Signals(-code).name})" if code < 0 else str(code)


def _phases(out: Path) -> dict[int, tuple[str, int]]:
    """rank -> (phase, pid) from the workers' phase files."""
    got = {}
    for f in out.glob("rank*.phase"):
        *what, pid = f.read_text().split()
        got[int(f.stem[4:])] = (" ".join(what), int(pid))
    return got


def _hung(phases: dict[int, tuple[str, int]]) -> str:
    parts = []
    for rank, (what, pid) in sorted(phases.items()):
        try:
            state = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            state = "gone"
        parts.append(f"worker {rank} {'stopped' if state == psutil.STATUS_STOPPED else 'at'} '{what}'")
    return ", ".join(parts) or "no worker started"


def _kill(procs: list[subprocess.Popen]) -> None:
    """Kill every process of the launch and reap them. torchrun starts each worker in a session of its own (to
    signal them itself), so the group alone would miss them: the whole tree is collected first."""
    tree = []
    for p in procs:
        try:
            tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for q in tree:
        try:
            q.kill()  # SIGKILL: also ends a stopped (SIGSTOP) worker
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        p.wait()
    psutil.wait_procs(tree, timeout=10)


def launch(framework: str, workers: int, threads: int, models: list[str], data: Path, params_path: Path,
           cfg: Scale, extra: tuple[str, ...] = (), workdir: Path | None = None) -> list[dict]:
    """Run one launch to the end; rank 0's rows, or ChildError in one line (the group killed, nothing kept but
    the workers' output, whose path the line names). `workdir` (kept) instead of a temporary one: tests read the
    weights that --dump writes there."""
    label = f"scale: {framework} at {workers} worker{'s' * (workers > 1)}"
    out = workdir or Path(tempfile.mkdtemp(prefix="mnist-bench-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["--framework", framework, "--models", *models, "--threads", str(threads), "--data", str(data),
            "--params", str(params_path), "--out", str(out), *extra]
    procs: list[subprocess.Popen] = []
    log = open(out / "workers.log", "w")
    (out / "tmp").mkdir(exist_ok=True)
    try:
        # the workers' temporary files (TensorFlow's autograph sources, torchrun's logs) stay in the launch's
        # directory, removed with it: a worker killed at a fault or the timeout never deletes its own
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(out / "tmp")}
        for cmd, more in commands(framework, workers, cfg.host, cfg.port, args):
            group = procs[0].pid if procs else 0  # one new process group: its own, then the first's
            procs.append(subprocess.Popen(cmd, env=env | more, stdout=log, stderr=subprocess.STDOUT,
                                          process_group=group))
        deadline = time.monotonic() + cfg.timeout_s
        while True:
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                log.flush()
                rank, code = backends.engine_class(framework).failed((out / "workers.log").read_text()) or \
                    (str(bad[0][0]), bad[0][1])
                raise ChildError(f"{label}: worker {rank} exited with {exit_text(code)}; every worker stopped, nothing "
                                 f"written (workers' output: {_keep(out)})")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                raise ChildError(f"{label}: no result within scale.timeout_s = {cfg.timeout_s:g} s "
                                 f"({_hung(_phases(out))}); every worker stopped, nothing written "
                                 f"(workers' output: {_keep(out)})")
            time.sleep(POLL_S)
        return json.loads((out / "result.json").read_text())
    finally:
        _kill(procs)
        log.close()
        if workdir is None:
            shutil.rmtree(out, ignore_errors=True)


def _keep(out: Path) -> str:
    """Keep the workers' output of a failed launch (only that) and return its path."""
    kept = Path(tempfile.mkstemp(prefix="mnist-bench-scale-", suffix=".log")[1])
    shutil.copyfile(out / "workers.log", kept)
    return str(kept)
