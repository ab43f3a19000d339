"""Data-parallel scaling: N workers do the maths one worker does; a worker that dies or hangs ends the launch in one
line with no process left; ports in use are refused; efficiency and verdicts come from paired, usable rounds."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline import params
from pipeline.errors import ParamsError
from pipeline.scale import launch, run
from pipeline.spec import init_weights
from tests.conftest import ROOT, raw_params, with_signals, write_params

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def free_port(count: int = 2) -> int:
    """A port with `count` free ones from it, so tests on the suite's two workers never meet on one."""
    while True:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        if port + count > 65535 - 64:
            continue
        try:
            launch.check_ports("localhost", port, count)
            return port
        except ParamsError:
            continue


SMALL = {"mlp.hidden": [16], "mlp.dropout": 0.0, "cnn.channels": [4, 8], "cnn.dense": 16, "cnn.kernel": 3,
         "cnn.dropout": 0.0, "train.batch_size": 16, "frameworks": ["torch", "tensorflow"]}


def _weights(d: Path, model: str, rank: int) -> list[np.ndarray]:
    with np.load(d / f"weights.{model}.rank{rank}.npz") as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_two_workers_take_the_steps_one_worker_takes_on_the_same_global_batch(prepared, framework):
    pp = write_params(prepared / "params.yaml", **SMALL | {"scale.port": free_port()})
    p = params.load(pp)
    got = {}
    for n in (1, 2):  # the first step, then one more (warmup 1, 1 timed): two Adam updates
        got[n] = launch.launch(framework, n, 1, ["mlp", "cnn"], prepared / "prepared.npz", pp, p.scale,
                               ("--warmup", "1", "--steps", "1", "--repeats", "1", "--dump"), workdir=prepared / f"w{n}")
    assert [r["workers"] for r in got[1] + got[2]] == [1, 1, 2, 2] and {r["precision"] for r in got[2]} == {"fp32"}
    assert [r["shard_batch"] for r in got[2]] == [8, 8] and [r["global_batch"] for r in got[2]] == [16, 16]
    for one, two in zip(got[1], got[2]):  # the global batch's loss before the first update: the same
        assert two["loss_first"] == pytest.approx(one["loss_first"], rel=1e-5)
    for model in ("mlp", "cnn"):
        w1, w2a, w2b = (_weights(prepared / d, model, r) for d, r in (("w1", 0), ("w2", 0), ("w2", 1)))
        init = init_weights(params.model_spec(p, model, (8, 8, 1), 10), p.seed)
        assert max(np.abs(a - b).max() for a, b in zip(w1, init)) > 1e-4  # it trained: the check has teeth
        for a, b in zip(w2a, w2b):  # every worker holds the same weights
            np.testing.assert_array_equal(a, b)
        for a, b in zip(w2a, w1):  # averaged shard gradients = the whole batch's gradient
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def _stage(prepared: Path, framework: str, **over) -> tuple[list[str], Path]:
    pp = write_params(prepared / "params.yaml", **SMALL | {"frameworks": [framework], "models": ["mlp"],
                                                            "scale.workers": [2], "scale.steps": 10**7,
                                                            "scale.port": free_port()} | over)
    return [sys.executable, "-m", "pipeline.stages.scale", "--data", str(prepared / "prepared.npz"), "--env",
            str(prepared / "env.json"), "--out", str(prepared / "out"), "--params", str(pp)], prepared / "out"


def _worker(stage: psutil.Process, rank: int) -> psutil.Process | None:
    """The worker of this rank among the stage's descendants, once it is measuring."""
    for c in stage.children(recursive=True):
        try:
            if "pipeline.scale.worker" not in " ".join(c.cmdline()):
                continue
            env = c.environ()
            r = env.get("RANK") or json.loads(env.get("TF_CONFIG", "{}")).get("task", {}).get("index")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if r is not None and int(r) == rank:
            return c
    return None


def _fault(prepared: Path, framework: str, sig: int, **over) -> tuple[int, str, list[int], Path]:
    """Start the stage, wait until worker 1 is measuring, send `sig` to it (SIGINT: to the stage's process group, as
    a terminal's Ctrl-C does; SIGTERM: to the stage alone, as `kill` does), and return (exit code, stderr, every pid
    the stage had under it, its out dir). The stage's temporary directory is prepared/tmp (_no_temporary_files)."""
    cmd, out = _stage(prepared, framework, **over)
    (prepared / "tmp").mkdir(exist_ok=True)
    p = subprocess.Popen(with_signals(cmd), cwd=ROOT, env=ENV | {"TMPDIR": str(prepared / "tmp")},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stage, end = psutil.Process(p.pid), time.monotonic() + 120
    victim = None
    while "measuring" not in _phase(victim):
        assert p.poll() is None and time.monotonic() < end, p.communicate()[1][-2000:]
        victim = _worker(stage, 1)
        time.sleep(0.2)
    everyone = [c.pid for c in stage.children(recursive=True)]
    time.sleep(1.0)  # inside the timed steps
    if sig == signal.SIGINT:
        os.killpg(p.pid, signal.SIGINT)
    elif sig == signal.SIGTERM:
        p.send_signal(sig)
    else:
        victim.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err, everyone, out


def _phase(worker: psutil.Process | None) -> str:
    """The phase a worker last wrote (its --out directory holds rank<r>.phase)."""
    try:
        args = worker.cmdline() if worker else []
        rank = worker.environ().get("RANK") if worker else None
    except psutil.NoSuchProcess:
        return ""
    if "--out" not in args:
        return ""
    files = sorted(Path(args[args.index("--out") + 1]).glob("rank*.phase"))
    mine = [f for f in files if rank is None or f.name == f"rank{rank}.phase"]
    return " ".join(f.read_text() for f in mine)


def _no_temporary_files(prepared: Path) -> bool:
    """What a killed worker could not delete (TensorFlow's autograph sources, torchrun's logs) went with the
    launch's directory; PyTorch's compile cache is meant to stay."""
    return [d.name for d in (prepared / "tmp").iterdir() if not d.name.startswith("torchinductor_")] == []


def _gone(pids: list[int]) -> bool:
    return not [q for q in pids if psutil.pid_exists(q) and psutil.Process(q).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_a_killed_worker_ends_the_stage_in_one_line_naming_it_with_no_process_left(prepared, framework):
    code, err, pids, out = _fault(prepared, framework, signal.SIGKILL)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: scale: {framework} at 2 workers: worker 1 exited with -9 (SIGKILL); every "
                          "worker stopped, nothing written (workers' output: "), err
    assert _gone(pids) and not out.exists()
    Path(err.strip().rsplit(": ", 1)[1].rstrip(")")).unlink()  # the kept output of the failed launch
    assert _no_temporary_files(prepared)


def test_a_hung_worker_is_named_when_the_timeout_ends_the_launch(prepared):
    code, err, pids, out = _fault(prepared, "torch", signal.SIGSTOP, **{"scale.timeout_s": 20})
    assert code == 1 and err.startswith("error: scale: torch at 2 workers: no result within scale.timeout_s = "
                                        "20 s (worker 0 at 'measuring mlp', worker 1 stopped 'measuring mlp')"), err
    assert _gone(pids) and not out.exists()
    Path(err.strip().rsplit(": ", 1)[1].rstrip(")")).unlink()


@pytest.mark.parametrize("framework, sig", [("tensorflow", signal.SIGINT), ("torch", signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupt_ends_the_stage_in_one_line_and_stops_every_worker(prepared, framework, sig):
    # the workers have process groups of their own (torchrun's, a session each): none hears a signal to the stage's
    code, err, pids, out = _fault(prepared, framework, sig)
    how = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}[sig]
    assert code == 128 + sig and re.fullmatch(
        rf"interrupted: stage scale stopped by {how}; its [1-9]\d* child processes have ended; nothing half-written, "
        r"its previous outputs are kept \(run it again to finish\)", err.strip()), err
    assert _gone(pids) and not out.exists() and _no_temporary_files(prepared)


def test_a_port_in_use_is_refused_in_one_line(prepared):
    port = free_port()
    cmd, out = _stage(prepared, "tensorflow", **{"scale.port": port})
    with socket.socket() as s:
        s.bind(("localhost", port + 1))  # the second worker's port
        r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == (f"error: params.yaml: scale.port: port {port + 1} on localhost "
                                                      "is in use (Address already in use); pick a free scale.port")
    assert not out.exists()


def test_no_worker_counts_measure_nothing_and_say_so(prepared):
    cmd, out = _stage(prepared, "torch", **{"scale.workers": []})
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads((out / "records.json").read_text())["measured"] is False
    assert json.loads((out / "metrics.json").read_text()) == {}


def test_efficiency_is_paired_within_rounds_and_flagged_launches_are_left_out():
    rows = []
    for r in range(6):
        drift = 1.0 + 0.5 * (r % 2)  # the machine alternates speed between rounds: pairing removes it
        for fw, one, two in (("torch", 100.0, 150.0), ("tensorflow", 80.0, 160.0)):
            rows += [{"framework": fw, "model": "mlp", "workers": n, "round": r, "samples_per_s": rate * drift,
                      "comm_share": 0.1 * n, "flag": "", "calib_before_gflops": 100.0 * drift,
                      "calib_after_gflops": 100.0 * drift} for n, rate in ((1, one), (2, two))]
    rows.append({"framework": "torch", "model": "mlp", "workers": 2, "round": 6, "samples_per_s": 1e9,
                 "comm_share": 0.0, "flag": "machine speed changed +90% during the launch",
                 "calib_before_gflops": 100.0, "calib_after_gflops": 190.0})
    table, verdicts = run.summary(rows, ["torch", "tensorflow"], ["mlp"], [1, 2], 0.05, 0.25)
    t = {(x["framework"], x["workers"]): x for x in table}
    assert t["torch", 2]["efficiency"] == pytest.approx(0.75) and t["tensorflow", 2]["efficiency"] == 1.0
    assert t["torch", 2]["efficiency_ci_low"] == pytest.approx(0.75) and t["torch", 2]["rounds"] == 6
    assert t["torch", 1]["efficiency"] == 1.0 and t["tensorflow", 2]["comm_share"] == pytest.approx(0.2)
    v = {x["workers"]: x for x in verdicts}
    assert v[1]["winner"] == "PyTorch" and v[1]["ratio"] == pytest.approx(1.25)
    assert v[2]["winner"] == "TensorFlow" and v[2]["ratio"] == pytest.approx(150 / 160)


def test_a_slow_spell_that_held_both_launches_still_pairs_them_and_launches_at_different_speeds_do_not():
    """The bench's pairing rule (rounds.alike) in scaling: rounds 0-5 at full speed; in rounds 6 and 7 the machine
    sat at 65% for both launches of torch (flagged, so out of the medians, but a fair pair); in round 8 torch's
    2-worker launch ran at 100% and its 1-worker one at 65% (no pair); round 9's 2-worker launch changed speed."""
    speeds = {(r, n): 1.0 for r in range(6) for n in (1, 2)} | {
        (6, 1): 0.65, (6, 2): 0.65, (7, 1): 0.65, (7, 2): 0.65, (8, 1): 0.65, (8, 2): 1.0, (9, 1): 1.0, (9, 2): 1.0}
    odd, rows = {(8, 1), (9, 2)}, []  # the two launches that break their rounds' pairs read 3x
    for (r, n), v in speeds.items():
        after = 200.0 * v * (1.5 if (r, n) == (9, 2) else 1.0)
        rows.append({"framework": "torch", "model": "mlp", "workers": n, "round": r, "comm_share": 0.1,
                     "samples_per_s": (100.0 if n == 1 else 160.0) * v * (1 + 0.01 * r) * (3 if (r, n) in odd else 1),
                     "calib_before_gflops": 200.0 * v, "calib_after_gflops": after,
                     "flag": run.flag(200.0 * v, after, 200.0, 0.25)})
    assert run.paired(rows, ("torch", 2), ("torch", 1), 0.25) == [0, 1, 2, 3, 4, 5, 6, 7]
    table, _ = run.summary(rows, ["torch"], ["mlp"], [1, 2], 0.05, 0.25)
    t = {x["workers"]: x for x in table}
    assert t[2]["efficiency"] == pytest.approx(0.8)  # the 3x launches of rounds 8 and 9 stay out of every figure
    assert t[2]["rounds"] == 7 and t[2]["samples_per_s"] == pytest.approx(160 * 1.03)  # 0-5 and 8: 65% out too
    assert run.comparisons(["torch"], [1, 2]) == [(("torch", 2), ("torch", 1))]
    assert run.comparisons(["torch", "tensorflow"], [2]) == [(("torch", 2), ("tensorflow", 2))]
    assert run.comparisons(["torch"], [2]) == [(("torch", 2), ("torch", 2))]  # alone: held steady


def test_worker_counts_must_split_the_batch_and_leave_each_worker_a_thread():
    with pytest.raises(Exception, match=r"^params.yaml: scale.workers: 3 workers cannot split train.batch_size "
                                        r"16 into equal shards"):
        params.parse(raw_params(**SMALL | {"scale.workers": [3]}))
    p = params.parse(raw_params(**SMALL | {"scale.workers": [1, 4], "device": "auto"}))
    with pytest.raises(Exception, match=r"^params.yaml: scale.workers: 4 workers on 2 threads leave a worker "
                                        r"without a thread"):
        run.plan(p, 2, gpus=0)
    assert run.plan(p, 2, gpus=4) == ["torch", "tensorflow"]  # device auto on a 4-GPU host: a GPU per worker
    with pytest.raises(Exception, match=r"^params.yaml: scale.workers: 4 workers need a GPU each, and 2 are visible"):
        run.plan(p, 2, gpus=2)
    cuda = params.parse(raw_params(**SMALL | {"scale.workers": [1, 4], "device": "cuda"}))
    with pytest.raises(Exception, match=r"^params.yaml: scale.workers: 4 workers need a GPU each, and 0 are"):
        run.plan(cuda, 2, gpus=0)


def test_each_tensorflow_worker_gets_its_place_in_the_cluster_and_one_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    cmds = launch.commands("tensorflow", 2, "node0", 29400, ["--x"])
    conf = [json.loads(env["TF_CONFIG"]) for _, env in cmds]
    assert [c["task"] for c in conf] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    assert conf[0]["cluster"] == {"worker": ["node0:29400", "node0:29401"]}
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in cmds] == ["2", "3"]
    for hidden in ("", "-1"):  # every GPU hidden stays hidden: no worker is handed device 0 or 1
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert [env["CUDA_VISIBLE_DEVICES"] for _, env in launch.commands("tensorflow", 2, "n", 1, [])] == ["", ""]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in launch.commands("tensorflow", 2, "n", 1, [])] == ["0", "1"]
    (torchrun, env), = launch.commands("torch", 2, "node0", 29400, ["--x"])
    assert env == {} and torchrun[torchrun.index("--rdzv-endpoint") + 1] == "node0:29400"
    assert torchrun[torchrun.index("--nproc-per-node") + 1] == "2" and torchrun[-1] == "--x"


@pytest.mark.parametrize("slow, extra", [((0.65, 0.65), 0), ((1.0, 0.65), 1)])
def test_a_round_is_launched_again_only_for_launches_that_met_different_machines(monkeypatch, slow, extra):
    """Round 2's two launches read the speedometer at `slow` of the run's usual speed. A slow spell that held both
    still gives that round's pair, so no round runs again (the old rule relaunched every flagged launch's round);
    a pair that met different speeds costs one more round. The rates never decide."""
    p = params.parse(raw_params(**{"frameworks": ["torch"], "scale.workers": [1, 2]}))

    def launch_at(fw, n, threads, models, data, params_path, scale):
        return [{"framework": fw, "model": m, "workers": n, "samples_per_s": 100.0 * n, "comm_share": 0.1}
                for m in models]

    readings = []

    def gemm(threads):
        rd, k = divmod(len(readings), 4)  # a round: two launches, each read before and after
        readings.append(200.0 * (slow[k // 2] if rd == 2 else 1.0))
        return readings[-1]

    monkeypatch.setattr(run, "launch", launch_at)
    monkeypatch.setattr(run, "check_ports", lambda *a: None)
    monkeypatch.setattr(run.speedo, "gemm_gflops", gemm)
    rows = run.rounds(p, ["torch"], Path("unused.npz"), Path("unused.yaml"), 2)
    assert 1 + max(r["round"] for r in rows) == p.scale.rounds + extra
    assert sum(bool(r["flag"]) for r in rows if r["round"] == 2) == 2 * (2 if slow[0] < 1 else 1)


def test_on_a_gpu_rank_0_reads_the_device_speedometer_around_its_models_and_the_launcher_flags_by_it(monkeypatch):
    """A launch's speedometer on a GPU is its rank 0's device matmul (worker.calibrated), read before its first
    model and after its last; the launcher's host GEMM is recorded beside it, not used: here the host reads a 35%
    swing in every launch, which would flag them all, while the device holds steady until round 3 drifts 30%."""
    from pipeline.scale import worker

    class Be:  # a fake GPU backend: its own matmul, one reading per call
        def __init__(self, readings): self.readings, self.calls = iter(readings), []
        def speedometer(self): return "torch matmul 4096x4096 fp32 on a fake GPU"
        def calibrate(self, threads): self.calls.append("calibrate"); return next(self.readings)

    be = Be([50_000.0, 51_000.0])
    work = lambda: be.calls.append("models") or [{"model": "mlp"}, {"model": "cnn"}]  # noqa: E731
    rows = worker.calibrated(be, 0, 2, work)
    assert be.calls == ["calibrate", "models", "calibrate"]
    assert [(r["calib_before_gflops"], r["calib_after_gflops"]) for r in rows] == [(50_000.0, 51_000.0)] * 2
    assert worker.calibrated(be, 1, 2, work) == [{"model": "mlp"}, {"model": "cnn"}] and be.calls[-1] == "models"
    be.speedometer = lambda: run.speedo.DESCRIPTION  # a CPU worker: the launcher's GEMM is the speedometer
    assert worker.calibrated(be, 0, 2, work) == [{"model": "mlp"}, {"model": "cnn"}]

    p = params.parse(raw_params(**{"frameworks": ["torch"], "scale.workers": [1], "device": "cuda"}))
    launches = iter(range(100))

    def launch_on_gpu(fw, n, threads, models, data, params_path, scale):
        k = next(launches)
        dev = Be([50_000.0, 50_000.0 * (1.3 if k == 3 else 1.0)])
        return worker.calibrated(dev, 0, threads, lambda: [{"framework": fw, "model": m, "workers": n,
                                                            "samples_per_s": 1e5, "comm_share": 0.0} for m in models])
    host = iter([200.0, 130.0] * 100)
    monkeypatch.setattr(run, "launch", launch_on_gpu)
    monkeypatch.setattr(run, "check_ports", lambda *a: None)
    monkeypatch.setattr(run.speedo, "gemm_gflops", lambda threads: next(host))
    rows = run.rounds(p, ["torch"], Path("unused.npz"), Path("unused.yaml"), 2)
    assert [bool(r["flag"]) for r in rows if r["model"] == "mlp"] == [False] * 3 + [True] + [False] * 3
    assert {(r["host_calib_before_gflops"], r["host_calib_after_gflops"]) for r in rows} == {(200.0, 130.0)}
    assert {r["speedometer"] for r in rows} == {"torch matmul 4096x4096 fp32 on a fake GPU"}
