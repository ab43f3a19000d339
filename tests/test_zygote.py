"""Children forked from a zygote: each a fresh, separate process that measures as a new interpreter's would; a
failure is one line and the zygote serves on; TensorFlow's are never forked where a GPU is visible."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import psutil
import pytest

from pipeline.errors import ChildError
from pipeline.measure import child
from pipeline.measure import zygote
from pipeline.measure.zygote import Zygotes, forks
from tests.conftest import write_params

TINY = {"frameworks": ["torch"], "models": ["mlp"], "mlp.hidden": [8], "train.batch_size": 16, "bench.steps": 2,
        "bench.repeats": 3, "bench.warmup": 1, "bench.min_repeat_s": 0, "bench.repeat_max_s": 2, "bench.latency_calls": 20,
        "bench.infer_batch_sizes": [4], "bench.calib_s": 0.05}


def test_forked_children_are_separate_fresh_processes_each_on_the_threads_it_asks_for(prepared):
    pp = write_params(prepared / "params.yaml", **TINY)
    data = prepared / "prepared.npz"
    with Zygotes(fork=True, gpu_visible=False) as via:
        got = []
        for i, threads in enumerate((1, 2, 1)):
            got.append(zygote.spawn(via, data, pp, "torch", "round", threads, f"round {i + 1} torch"))
            proc = psutil.Process(via._procs["torch"].pid)
            assert proc.children() == []  # the child ended and was reaped; it never came back into the loop
        # a thread count set in one child is not inherited by the next: each starts from the zygote, which set none
        assert [(r[0].threads, r[0].intra_op_threads) for r in got] == [(1, 1), (2, 2), (1, 1)]
        assert all(r[0].child_forked and r[0].status == "ok" for r in got)
        # a rate, or (a machine busy for all of the child) too few calm repeats for one: never a rate from too few
        assert all(r[0].train.samples_per_s > 0 if r[0].train.repeats >= TINY["bench.repeats"] else
                   math.isnan(r[0].train.samples_per_s) for r in got)
        m = got[0][0]
        # where its time went: start, the speedometer (bench.calib_s on each side, the readings between repeats),
        # the model; parts of a whole
        assert m.child_wall_s > m.child_setup_s + m.child_calib_s + m.measure_s and m.child_setup_s > 0
        assert 2 * TINY["bench.calib_s"] < m.child_calib_s < m.child_wall_s and m.measure_s > 0
        pid = proc.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended with the run
    with Zygotes(fork=False, gpu_visible=False) as via:
        plain = zygote.spawn(via, data, pp, "torch", "round", 1, "round 1 torch")
    # the same record as a child started from nothing: the same fields, and the same what/where/how of it
    who = ("model", "variant", "status", "framework", "framework_version", "device", "description", "threads",
           "intra_op_threads", "inter_op_threads", "precision", "speedometer")
    a, b = got[0][0].flat(), plain[0].flat()
    assert set(a) == set(b) and {k: a[k] for k in who} == {k: b[k] for k in who} and not plain[0].child_forked

def test_a_failing_forked_child_is_one_line_and_the_zygote_serves_the_next(prepared, capsys):
    pp = write_params(prepared / "params.yaml", **TINY)
    with Zygotes(fork=True, gpu_visible=False) as via:
        with pytest.raises(ChildError, match=r"^bench child round 1 torch failed \(exit 2\); its error is printed "):
            zygote.spawn(via, prepared / "missing.npz", pp, "torch", "round", 1, "round 1 torch")
        assert "missing.npz" in capsys.readouterr().err  # the child's own one-line error, passed on
        ok = zygote.spawn(via, prepared / "prepared.npz", pp, "torch", "round", 1, "round 2 torch")
    assert ok[0].status == "ok" and ok[0].child_forked


def test_children_are_forked_only_where_it_is_safe(monkeypatch):
    # CUDA touched by TensorFlow's import would fail in a forked child: only the other frameworks fork there
    assert [forks(fw, gpu_visible=True) for fw in ("torch", "tensorflow", "numpy")] == [True, False, True]
    assert all(forks(fw, gpu_visible=False) for fw in ("torch", "tensorflow", "numpy"))
    assert not Zygotes(fork=False, gpu_visible=False).forked("torch")  # bench.fork: false starts every child anew
    assert Zygotes(fork=True, gpu_visible=True).forked("torch")
    monkeypatch.setattr("sys.platform", "darwin")  # macOS's system libraries are not fork-safe: never forked there
    assert not Zygotes(fork=True, gpu_visible=False).forked("torch")


# A child's run after the zygote's preload, in a fresh interpreter: the modules it still had to import itself
AFTER_PRELOAD = """
import contextlib, io, json, sys
from pipeline.measure import zygote
zygote.preload(sys.argv[1])
from pipeline.measure import child
before = set(sys.modules)
with contextlib.redirect_stdout(io.StringIO()):
    child.main(["--framework", sys.argv[1], *sys.argv[2:]])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


HEAVY = {"torch", "functorch", "sympy", "mpmath", "tensorflow", "keras", "tf_keras", "jax", "triton"}


def imported_by_child(prepared, framework: str, **settings) -> list[str]:
    """The framework-side modules a child still imported itself after the zygote's preload."""
    pp = write_params(prepared / "params.yaml", **TINY | settings)
    out = subprocess.run([sys.executable, "-c", AFTER_PRELOAD, framework, "--kind", "round", "--threads", "1",
                          "--data", str(prepared / "prepared.npz"), "--params", str(pp)],
                         capture_output=True, text=True, check=True)
    return [m for m in json.loads(out.stdout.strip().splitlines()[-1]) if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_a_forked_child_imports_nothing_of_its_framework_that_the_zygote_could_have(prepared, framework):
    # PyTorch imports TorchDynamo (and sympy, ~840 modules, 1 s here) when the first optimizer is made: without the
    # zygote's preload every forked child paid that again
    assert imported_by_child(prepared, framework) == []


def test_a_lazy_import_this_framework_version_lacks_is_skipped(monkeypatch):
    # PyTorch's lazily imported modules differ between versions (the CUPTI monitor is new in 2.13); a zygote on a
    # GPU host's own PyTorch must still start
    from pipeline.backends.numpy import backend as numpy_backend
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setattr(numpy_backend.BACKEND, "LAZY_IMPORTS", ("pipeline.no_such_module", "colorsys"))
    zygote.preload("numpy")
    assert "colorsys" in sys.modules and "pipeline.no_such_module" not in sys.modules


def test_a_forked_child_leaves_no_temporary_file_behind(prepared, tmp_path, monkeypatch):
    # it exits without atexit handlers (they are the zygote's too), where TensorFlow deletes the sources autograph
    # writes for each traced function: two per TensorFlow child were left in the temporary directory
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the zygote's, and so its children's
    pp = write_params(prepared / "params.yaml", **TINY)
    with Zygotes(fork=True, gpu_visible=False) as via:
        got = zygote.spawn(via, prepared / "prepared.npz", pp, "tensorflow", "round", 1, "round 1 tensorflow")
        assert got[0].child_forked and got[0].status == "ok"
        assert list(tmp.iterdir()) == []  # nor the child's own directory


def test_a_stop_while_a_child_runs_is_passed_on_and_waits_for_its_clean_up(monkeypatch):
    """SIGTERM reaches the zygote at any moment of its loop: between requests it stops at once; while a child runs or
    its directory is being removed, the child is sent SIGTERM and the zygote stops only after its clean-up (a signal
    raised inside rmtree left half of a child's temporary directory behind)."""
    import signal as sig

    from pipeline.errors import Terminated
    sent = []
    monkeypatch.setattr(zygote.os, "kill", lambda pid, s: sent.append((pid, s)))
    monkeypatch.setattr(zygote.os, "waitpid", lambda pid, flags: (stop._handle(sig.SIGTERM, None), (pid, 0))[1])
    stop = zygote.Stop()
    lines = stop.reading(iter(["a\n", "b\n"]))
    assert next(lines) == "a\n"
    assert stop.wait(41) == 0 and sent == [(41, sig.SIGTERM)]  # passed on to the running child, not raised
    with pytest.raises(Terminated):  # once its clean-up is done
        stop.check()
    idle = zygote.Stop()
    with pytest.raises(Terminated):  # between children nothing is left to finish
        idle._handle(sig.SIGTERM, None)
    early = zygote.Stop()
    next(early.reading(iter(["a\n"])))
    early._handle(sig.SIGTERM, None)  # after the request, before the fork gave a pid
    sent.clear()
    monkeypatch.setattr(zygote.os, "waitpid", lambda pid, flags: (pid, 0))
    early.wait(42)
    assert sent == [(42, sig.SIGTERM)]  # passed on as soon as the pid is known
    for s in files_stops():
        sig.signal(s, sig.SIG_DFL)


def files_stops():
    from pipeline import files
    return files.STOPS
