"""Ctrl-C, a real SIGINT to a running stage's process group, ends it with one line and exit 130; SIGTERM to the
stage alone (`kill`, `timeout`, a scheduler), with one line and exit 143; SIGHUP (a closed terminal) with exit 129,
unless the stage was started to ignore it. Each leaves no child process and no temporary file behind, and keeps the
stage's previous outputs whole."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, with_signals, write_params

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def interrupt(cmd: list[str], ready, timeout: float = 60, env: dict = ENV,
              sig: int = signal.SIGINT) -> tuple[int, str, list[int]]:
    """Start `cmd` as its own process group, wait until ready(process) holds, send SIGINT to the whole group (as a
    terminal's Ctrl-C does) or SIGTERM to the stage's process alone, and return (exit code, stderr, pids of the
    children it had)."""
    p = subprocess.Popen(with_signals(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    proc, end = psutil.Process(p.pid), time.monotonic() + timeout
    while not ready(proc):
        assert p.poll() is None, f"ended before it was interrupted: {p.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "never became ready"
        time.sleep(0.1)
    children = [c.pid for c in proc.children(recursive=True)]
    if sig == signal.SIGINT:
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(sig)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err, children


def gone(pids: list[int]) -> bool:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig, fork", [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "sigterm-forked-child", "sigterm-new-child"])
def test_an_interrupted_bench_is_one_line_no_orphan_and_the_old_results_stay(prepared, sig, fork):
    write_params(prepared / "params.yaml", **{"frameworks": ["torch"], "models": ["mlp"], "mlp.hidden": [8],
                                             "threads": 1, "train.batch_size": 16, "bench.steps": 5000,
                                             "bench.repeats": 50, "bench.thread_counts": [], "bench.fork": fork})
    out = prepared / "bench"
    out.mkdir()
    (out / "records.json").write_text('{"old": true}\n')
    cmd = [sys.executable, "-m", "pipeline.stages.bench", "--data", str(prepared / "prepared.npz"), "--env",
           str(prepared / "env.json"), "--out", str(out), "--params", str(prepared / "params.yaml")]
    # a child has started, and has had time to import torch and begin measuring
    started: dict = {}

    def child_running(proc: psutil.Process) -> bool:
        if proc.children() and "t" not in started:
            started["t"] = time.monotonic()
        return "t" in started and time.monotonic() - started["t"] > 3
    tmp = prepared / "tmp"  # the bench's, its zygote's and its children's temporary directories
    tmp.mkdir()
    code, err, children = interrupt(cmd, child_running, env=ENV | {"TMPDIR": str(tmp)}, sig=sig)
    lines = [line for line in err.splitlines() if line.strip()]
    how = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}[sig]
    assert code == 128 + sig, err[-3000:]
    # it returns once every process it had has ended, and says so
    assert re.match(rf"interrupted: stage bench stopped by {how}; its [1-9]\d* child process(es have| has) ended; "
                    "nothing half-written", lines[-1]), lines[-1]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Terminated" not in err, err[-4000:]
    # the children too, though a SIGTERM reached the bench alone (Ctrl-C reaches the whole process group)
    assert children and gone(children)
    # a forked child's own directory too, removed once the child has stopped; PyTorch's compile cache is meant to stay
    assert [d.name for d in tmp.iterdir() if not d.name.startswith("torchinductor_")] == []
    assert (out / "records.json").read_text() == '{"old": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["records.json"]  # no metrics.json, no temp file


def test_ctrl_c_during_training_is_one_line_and_writes_nothing(prepared):
    write_params(prepared / "params.yaml", **{"mlp.hidden": [64], "threads": 1, "train.batch_size": 4,
                                             "schedule.mlp.epochs": 1000, "train.stop_at_target": False})
    out = prepared / "out"
    cmd = [sys.executable, "-m", "pipeline.stages.train", "--framework", "torch", "--model", "mlp", "--data",
           str(prepared / "prepared.npz"), "--out", str(out), "--model-out", str(prepared / "model"), "--params",
           str(prepared / "params.yaml")]
    t0 = time.monotonic()
    code, err, _ = interrupt(cmd, lambda proc: time.monotonic() - t0 > 6)
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: stage train stopped by Ctrl-C")
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


# A stage that says it is running, then waits: what files.run does with a signal, in a tenth of a second's start.
WAITER = ("import sys, time\nsys.argv = ['waiter']\nfrom pipeline import files\n"
          "files.run(lambda argv: (print('running', flush=True), time.sleep(60)))")


def _waiter(ignore_hup: bool = False) -> subprocess.Popen:
    cmd = with_signals([sys.executable, "-c", WAITER], ignore=(signal.SIGHUP,) if ignore_hup else ())  # as nohup
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "running\n"
    return p


def test_a_closed_terminal_stops_a_stage_in_one_line_unless_it_was_started_to_ignore_that():
    p = _waiter()
    p.send_signal(signal.SIGHUP)
    assert p.wait(timeout=10) == 129
    assert p.stderr.read().strip() == ("interrupted: stage waiter stopped by SIGHUP; nothing half-written, its "
                                       "previous outputs are kept (run it again to finish)")
    p = _waiter(ignore_hup=True)  # `nohup make repro`: the stage keeps running when the terminal goes
    p.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 143 and "stopped by SIGTERM" in p.stderr.read()


def test_an_interrupted_bench_gives_a_child_started_anew_sigterm_and_waits_for_its_clean_up(tmp_path):
    from pipeline.measure import zygote
    ready, cleaned = tmp_path / "ready", tmp_path / "cleaned"
    script = ("import pathlib, sys, time\nfrom pipeline import files\n"
              "def main(argv):\n    try:\n        pathlib.Path(argv[0]).touch()\n        time.sleep(60)\n"
              "    finally:\n        pathlib.Path(argv[1]).write_text('clean-up ran')\n"
              "files.run(main, quiet_interrupt=True)")

    def interrupt_once_running(signum, frame):  # Ctrl-C or SIGTERM reaching the bench while its child runs
        if not ready.exists():
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            return
        raise KeyboardInterrupt
    before = signal.signal(signal.SIGALRM, interrupt_once_running)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            zygote._fresh(with_signals([sys.executable, "-c", script, str(ready), str(cleaned)]))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert cleaned.read_text() == "clean-up ran"  # SIGTERM and a wait, not SIGKILL: its finally blocks ran


# A stage whose child takes a second and a half to stop when told to (it traps the signals, then exits)
SLOW_CHILD = ("import subprocess, sys, time\nsys.argv = ['slow']\nfrom pipeline import files\n"
              "CHILD = ('import signal, sys, time\\n'\n"
              "         'def late(s, f):\\n    time.sleep(1.5)\\n    sys.exit(0)\\n'\n"
              "         'signal.signal(signal.SIGINT, late)\\nsignal.signal(signal.SIGTERM, late)\\n'\n"
              "         'print(\"up\", flush=True)\\ntime.sleep(60)')\n"
              "def main(argv):\n"
              "    p = subprocess.Popen([sys.executable, '-c', CHILD], stdout=subprocess.PIPE, text=True)\n"
              "    p.stdout.readline()\n"
              "    print(p.pid, flush=True)\n"
              "    time.sleep(60)\n"
              "files.run(main)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_stage_returns_only_once_every_child_has_ended_and_says_so(sig):
    p = subprocess.Popen(with_signals([sys.executable, "-c", SLOW_CHILD]), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    kid = int(p.stdout.readline())
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)  # Ctrl-C: the child hears it too
    else:
        p.send_signal(sig)  # `kill`: the stage alone, which ends its child itself
    p.wait(timeout=60)
    assert not psutil.pid_exists(kid) or psutil.Process(kid).status() == psutil.STATUS_ZOMBIE  # gone before we were
    how = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}[sig]
    assert p.stderr.read().strip() == (f"interrupted: stage slow stopped by {how}; its 1 child process has ended; "
                                       "nothing half-written, its previous outputs are kept (run it again to finish)")
