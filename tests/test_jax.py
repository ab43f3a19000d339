"""The JAX backend's own promises: the threads it reports are the ones that work, a new rate recompiles nothing,
fp16 scales its loss as PyTorch does, models and batches come back as they went, and a forked child runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pipeline import backends, spec as specs
from pipeline.backends.base import Feed
from pipeline.backends.jax import backend as jax_backend
from pipeline.backends.jax import runtime
from pipeline.errors import ParamsError
from pipeline.measure import zygote
from pipeline.spec import LOSS_SCALE
from tests.conftest import ROOT, cuda, write_params
from tests.test_zygote import TINY, imported_by_child

jb = backends.create("jax", 2, "cpu", 0, "fp32")
MLP = specs.mlp((8, 8, 1), 10, [32, 16], "relu", 0.0)
CNN = specs.cnn((12, 10, 1), 10, [4, 6], 3, 20, 0.0)
SGD = specs.Optim("sgd", 0.01, 0.0, 0.9, 0.999, 1e-8)


def batch(s, n=16, seed=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *s.in_shape)).astype(np.float32), rng.integers(0, 10, n)


# A fresh process: a backend on argv[1] threads, CNN steps after a warm-up (compilation leaves work on other threads
# for a while), and which threads did the work: each one's CPU ticks, by name, the caller's marked
THREADS = """
import json, os, sys, threading, time
import numpy as np
from pipeline import backends, spec as specs
be = backends.create("jax", int(sys.argv[1]), "cpu", 0, "fp32")
s = specs.cnn((28, 28, 1), 10, [16, 32], 3, 128, 0.0)
step = be.make_step(be.build(s, specs.init_weights(s, 0)), specs.Optim("sgd", 0.01, 0.0, 0.9, 0.999, 1e-8), "jit")
rng = np.random.default_rng(0)
x, y = be.put(rng.normal(size=(128, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 128))
for _ in range(20):
    be.sync(step(x, y))
def ticks():
    out = {}
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/self/task/{t}/comm") as f:
            name = "caller" if int(t) == threading.get_native_id() else f.read().strip()
        out[int(t)] = name, int(fields[11]) + int(fields[12])  # utime + stime
    return out
before, c0, t0 = ticks(), time.process_time(), time.perf_counter()
for _ in range(20):
    be.sync(step(x, y))
cpu_per_wall = (time.process_time() - c0) / (time.perf_counter() - t0)
work = [(name, v - before.get(t, (name, 0))[1]) for t, (name, v) in ticks().items()]
print(json.dumps({"info": [be.info["intra_op_threads"], be.info["inter_op_threads"]], "work": work,
                  "cpu_per_wall": cpu_per_wall, "env": os.environ.get("PJRT_NPROC")}))
"""


def in_fresh_process(threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", THREADS, str(threads)], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PJRT_NPROC": "7"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="threads are counted in /proc/self/task")
def test_the_threads_reported_are_the_threads_that_compute_each_in_a_fresh_process():
    # XLA_FLAGS' old thread switches change nothing in jaxlib 0.10; PJRT_NPROC sizes the pool, and the pool is
    # counted by its threads' name. A PJRT_NPROC in the environment (7 here) is the run's to replace, and the
    # backend leaves the environment as it found it, so a process it starts inherits nothing of its own.
    one, two = in_fresh_process(1), in_fresh_process(2)
    assert one["info"] == [1, 1] and two["info"] == [2, 1] and one["env"] == two["env"] == "7"
    for got, pool in ((one, 1), (two, 2)):
        total = sum(v for _, v in got["work"])
        busy = sorted(name for name, v in got["work"] if v > 0.03 * total)
        # the work is done by the calling thread and the pool's threads, every one of them, and no other thread
        assert total > 20 and busy == ["caller"] + [runtime.POOL] * pool, got["work"]
    # the caller hands each program's operations to the pool and waits for them (synchronous dispatch): at one
    # thread the process does not compute on two cores at once (1.0 is one core busy all the time, 2.0 two). The
    # caller's wait spins a little, more when a busy neighbour descheduling the pool makes waits long: 1.5, not 1.0
    assert one["cpu_per_wall"] < 1.5


def test_a_new_learning_rate_is_a_new_value_in_the_compiled_step_not_a_new_compilation():
    events = []
    listen = lambda event, duration, **kw: events.append(event) if "/jax/core/compile/" in event else None  # noqa
    x, y = jb.put(*batch(MLP))
    model = jb.build(MLP, specs.init_weights(MLP, 0))
    step = jb.make_step(model, SGD, jb.DEFAULT)
    jb.sync(step(x, y))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        before = jb.get_weights(model, MLP)
        step.set_lr(0.0)
        jb.sync(step(x, y))
        frozen = jb.get_weights(model, MLP)
        for lr in (0.05, 0.02, 0.1):
            step.set_lr(lr)
            jb.sync(step(x, y))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert events == []  # no trace, no compilation after the first step
    assert all(np.array_equal(a, b) for a, b in zip(before, frozen))  # and the rate really was 0 for that step
    assert not all(np.array_equal(a, b) for a, b in zip(frozen, jb.get_weights(model, MLP)))


fp16 = backends.create("jax", 2, "cpu", 0, "fp16")


def updates(be, s, x, y, optim, steps=1):
    w0 = specs.init_weights(s, 0)
    model = be.build(s, w0)
    step = be.make_step(model, optim, be.DEFAULT)
    for _ in range(steps):
        be.sync(step(*be.put(x, y))[0])
    return step, [a - b for a, b in zip(be.get_weights(model, s), w0)]


def test_fp16_scales_the_loss_unscales_the_update_and_skips_a_non_finite_one():
    x, y = batch(MLP)
    _, exact = updates(jb, MLP, x, y, SGD)
    step, half = updates(fp16, MLP, x, y, SGD)
    for got, ref in zip(half, exact):  # unscaled: without it the update would be 2^15 too big
        np.testing.assert_allclose(got, ref, rtol=0, atol=0.05 * np.abs(ref).max())
    assert step.scaler.get_scale() == LOSS_SCALE
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    step, skipped = updates(fp16, MLP, bad, y, SGD)
    assert all(not np.any(d) for d in skipped) and step.scaler.get_scale() == LOSS_SCALE / 2


def test_fp16_loss_scale_grows_and_backs_off_as_pytorchs_and_a_skipped_step_is_not_counted(monkeypatch):
    from pipeline.backends.torch import backend as torch_backend
    monkeypatch.setattr(jax_backend, "LOSS_SCALE_GROWTH", 2)
    monkeypatch.setattr(torch_backend, "LOSS_SCALE_GROWTH", 2)
    adam = specs.Optim("adam", 1e-3, 0.0, 0.9, 0.999, 1e-8)
    x, y = batch(MLP, seed=4)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    seen = {}
    for be in (fp16, backends.create("torch", 2, "cpu", 0, "fp16")):
        model = be.build(MLP, specs.init_weights(MLP, 0))
        step, scales = be.make_step(model, adam, be.DEFAULT), []
        for xb in (x, x, bad, x):
            be.sync(step(*be.put(xb, y))[0])
            scales.append(step.scaler.get_scale())
        count = int(step.optimizer.state.inner_state[0].count) if be.NAME == "jax" else \
            int(step.optimizer.state[next(iter(model.parameters()))]["step"])
        seen[be.NAME] = scales, count
    assert seen["jax"] == seen["torch"] == ([2.0 ** 15, 2.0 ** 16, 2.0 ** 15, 2.0 ** 15], 3)


def test_fp16_overflows_on_the_same_steps_as_pytorch_and_then_trains_alike():
    x, y = batch(CNN)
    paths = {}
    for be in (fp16, backends.create("torch", 2, "cpu", 0, "fp16")):
        model = be.build(CNN, specs.init_weights(CNN, 0))
        step, scales, weights = be.make_step(model, SGD, be.DEFAULT), [], []
        for _ in range(5):
            be.sync(step(*be.put(x, y))[0])
            scales.append(step.scaler.get_scale())
            weights.append(be.get_weights(model, CNN))
        paths[be.NAME] = scales, weights
    assert paths["jax"][0] == paths["torch"][0] == [2.0 ** 14, 2.0 ** 13, 2.0 ** 13, 2.0 ** 13, 2.0 ** 13]
    w0 = specs.init_weights(CNN, 0)
    for k, (t, j) in enumerate(zip(paths["torch"][1], paths["jax"][1])):
        moved = max(np.abs(a - b).max() for a, b in zip(t, w0))
        assert (moved == 0) == (k < 2)
        for a, b in zip(t, j):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * max(moved, 1e-3))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("s", [MLP, CNN], ids=["mlp", "cnn"])
def test_16_bits_give_pytorchs_logits_within_the_formats_precision_and_really_ran(s, precision):
    eps = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}[precision]
    x = np.random.default_rng(1).normal(size=(32, *s.in_shape)).astype(np.float32)
    w = specs.init_weights(s, 0)

    def logits(be):
        model = be.build(s, w)
        return be.numpy(be.make_predict(model, be.DEFAULT)(be.put(x, np.zeros(32, np.int64))[0])), model
    half = fp16 if precision == "fp16" else backends.create("jax", 2, "cpu", 0, "bf16")
    j16, model = logits(half)
    t16, _ = logits(backends.create("torch", 2, "cpu", 0, precision))
    j32, _ = logits(jb)
    assert half.info["precision"] == precision and j16.dtype == np.float32
    assert all(p.dtype == np.float32 for layer in model.params.values() for p in layer.values())  # mixed, not 16-bit
    layers, scale = sum(1 for shape in s.param_shapes() if len(shape) > 1), np.abs(j32).max()
    np.testing.assert_allclose(j16, t16, rtol=0, atol=layers * eps * scale)
    assert np.abs(j16 - j32).max() > 100 * np.finfo(np.float32).eps * scale


def test_precision_is_read_back_and_tf32_is_refused_off_a_gpu():
    assert jb.info["precision"] == "fp32" and jb.info["matmul_precision"] == "highest"
    assert jax_backend.precision_of("tensorfloat32", jax.numpy.float32) == "tf32"
    assert jax_backend.precision_of(None, jax.numpy.float32) == "matmul precision None"  # XLA's default: not fp32
    with pytest.raises(ParamsError, match=r"^params.yaml: precision: tf32 runs only on a CUDA GPU"):
        backends.create("jax", 1, "cpu", 0, "tf32")


def test_a_saved_model_loads_back_exactly_and_a_failed_write_is_an_oserror_naming_the_path(tmp_path):
    model = jb.build(CNN, specs.init_weights(CNN, 0))
    x, y = jb.put(*batch(CNN))
    step = jb.make_step(model, specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-8), jb.DEFAULT)
    for _ in range(3):
        step(x, y)
    jb.save(model, tmp_path / "model.msgpack")
    back = jb.load(CNN, tmp_path / "model.msgpack")
    assert specs.digest(jb.get_weights(back, CNN)) == specs.digest(jb.get_weights(model, CNN))
    assert np.array_equal(jb.numpy(jb.make_predict(back, "jit")(x)), jb.numpy(jb.make_predict(model, "jit")(x)))
    with pytest.raises(OSError, match="no_such_dir"):
        jb.save(model, tmp_path / "no_such_dir" / "model.msgpack")


def feed(shift: int) -> Feed:
    """40 random 6x5 images, batches of 8, prefetch 2 per worker."""
    images = np.random.default_rng(0).integers(0, 256, (40, 6, 5), dtype=np.uint8)
    return Feed(images, np.arange(40) % 10, 0.13, 0.3, 8, shift, 5, False, False, 2)


def test_the_loader_serves_normalised_shifted_device_batches_the_same_with_any_workers():
    f = feed(0)
    norm = (f.images.astype(np.float32) / 255.0 - f.mean) / f.std
    xb, yb = next(jb.make_loader(f, 0))
    assert isinstance(xb, jax.Array) and xb.shape == (8, 6, 5, 1) and xb.dtype == np.float32 and yb.dtype == np.int32
    x, y = np.asarray(xb), np.asarray(yb)
    rows = [int(np.argmin(np.abs(norm - x[i, ..., 0]).sum(axis=(1, 2)))) for i in range(8)]
    np.testing.assert_allclose(x[..., 0], norm[rows], atol=1e-5)  # each one an image, normalised ...
    assert list(y) == [r % 10 for r in rows] and len(set(rows)) == 8  # ... with its label, no repeats
    shifted = feed(2)
    first = [tuple(map(np.asarray, next(jb.make_loader(shifted, w)))) for w in (0, 2)]
    np.testing.assert_array_equal(first[0][0], first[1][0])  # the plan is drawn apart from the workers
    x, y = first[0]
    # each one an image of its class moved by up to 2 pixels each way, 0.0 shifted in: the normalised image padded,
    # as the other backends' loaders pad it
    for i in range(8):
        moved = [np.pad(n, 2)[dy:dy + 6, dx:dx + 5] for n in norm[np.arange(40) % 10 == y[i]]
                 for dy in range(5) for dx in range(5)]
        assert min(np.abs(m - x[i, ..., 0]).max() for m in moved) < 1e-5
    it = jb.make_loader(f, 2)
    epoch = [int(v) for _ in range(5) for v in np.asarray(next(it)[1])]  # 5 batches of 8: one epoch of 40
    assert sorted(epoch) == sorted(list(np.arange(40) % 10))


FORKED = """
import json, os, sys
from pipeline.measure import zygote
zygote.preload("jax")
from jax._src import xla_bridge
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
parent = {"started": xla_bridge.backends_are_initialized(), "threads": names}
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    import numpy as np
    from pipeline import backends, spec as specs
    be = backends.create("jax", 1, "cpu", 0, "fp32")
    s = specs.mlp((8, 8, 1), 10, [32, 16], "relu", 0.0)
    adam = specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-8)
    step = be.make_step(be.build(s, specs.init_weights(s, 0)), adam, "jit")
    rng = np.random.default_rng(3)
    x, y = be.put(rng.normal(size=(16, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 16))
    losses = [float(step(x, y)[0]) for _ in range(3)]
    os.write(w, json.dumps({"losses": losses, "threads": be.info["intra_op_threads"]}).encode())
    os._exit(0)
os.close(w)
child = json.loads(os.read(r, 65536))
print(json.dumps({"parent": parent, "child": child, "status": os.waitpid(pid, 0)[1]}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="zygotes fork on Linux only")
def test_a_child_forked_after_jax_is_imported_starts_xla_itself_and_trains_as_an_unforked_process():
    out = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # the zygote imported everything and started nothing: no XLA client, no thread but NumPy's BLAS server
    assert got["parent"]["started"] is False and len(got["parent"]["threads"]) <= 2
    assert got["status"] == 0 and got["child"]["threads"] == 1
    model = jb.build(MLP, specs.init_weights(MLP, 0))
    step = jb.make_step(model, specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-8), "jit")
    x, y = jb.put(*batch(MLP))
    assert got["child"]["losses"] == pytest.approx([float(step(x, y)[0]) for _ in range(3)], rel=1e-5)
    assert "fork" not in out.stderr  # jax's at-fork warning is installed with its backend: never here


@pytest.mark.skipif(sys.platform != "linux", reason="zygotes fork on Linux only")
def test_the_bench_forks_jax_children_each_on_its_own_threads_and_they_import_nothing_more(prepared):
    pp = write_params(prepared / "params.yaml", **TINY | {"frameworks": ["jax"]})
    with zygote.Zygotes(fork=True, gpu_visible=False) as via:
        got = [zygote.spawn(via, prepared / "prepared.npz", pp, "jax", "round", t, f"round jax {t}") for t in (1, 2)]
    assert [(r[0].threads, r[0].intra_op_threads, r[0].inter_op_threads) for r in got] == [(1, 1, 1), (2, 2, 1)]
    assert all(r[0].child_forked and r[0].status == "ok" and r[0].train.samples_per_s > 0 for r in got)
    assert imported_by_child(prepared, "jax", frameworks=["jax"]) == []  # LAZY_IMPORTS: the zygote's once


def test_a_gpu_run_without_jaxs_cuda_build_or_device_is_refused_saying_which(monkeypatch):
    from pipeline.probe import telemetry
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 1)
    monkeypatch.setattr(runtime, "cuda_build", lambda: None)
    with pytest.raises(ParamsError, match=r"JAX sees no GPU: its CPU-only build is installed \(pip install "
                                          r"'jax\[cuda12\]==0\.10\.2'\); or set device: cpu$"):
        jax_backend.JaxBackend(1, "cuda", 0, "fp32")
    monkeypatch.setattr(runtime, "cuda_build", lambda: "12")  # the plugin is there and starts no GPU
    monkeypatch.setattr(runtime, "start", lambda platform, threads: (_ for _ in ()).throw(RuntimeError("no CUDA")))
    for driver, said in (((12, 4), r"its CUDA 12 plugin finds no device \(no CUDA\); or set device: cpu$"),
                         ((11, 8), r"its build for CUDA 12 needs a driver for CUDA 12, and this one runs CUDA "
                                   r"11\.8")):
        monkeypatch.setattr(telemetry, "driver_cuda", lambda driver=driver: driver)
        with pytest.raises(ParamsError, match=said):
            jax_backend.JaxBackend(1, "auto", 0, "fp32")


def test_gpu_facts_are_read_from_the_device_and_a_peak_counts_only_once_it_rose_since_the_reset(monkeypatch):
    class Gpu:
        compute_capability = "9.0"
    assert runtime.capability(Gpu()) == (9, 0) and runtime.capability(jax.devices("cpu")[0]) is None
    be = backends.create("jax", 2, "cpu", 0, "fp32")
    assert np.isnan(be.memory_peak_mb())  # a CPU keeps no allocator statistics
    stats = {"peak_bytes_in_use": 3 * 2**20}
    monkeypatch.setattr(runtime, "memory_stats", lambda device: dict(stats))
    be.reset_memory_peak()
    assert np.isnan(be.memory_peak_mb())  # XLA keeps its all-time peak: one not passed since the reset is unknown
    stats["peak_bytes_in_use"] = 5 * 2**20
    assert be.memory_peak_mb() == 5.0


@cuda
@pytest.mark.skipif(runtime.cuda_build() is None, reason="needs JAX's CUDA build (jax[cuda12])")
def test_on_a_gpu_jax_computes_there_at_fp32_with_tf32_off_and_reads_its_speedometer_and_memory():
    be = jax_backend.JaxBackend(2, "cuda", 0, "fp32")
    assert be.device.platform == "gpu" and be.info["precision"] == "fp32"
    assert be.calibrate(2, 0.05) > 0 and be.speedometer().startswith("jax matmul 4096x4096 fp32 on ")
    be.reset_memory_peak()
    model = be.build(CNN, specs.init_weights(CNN, 0))
    be.sync(be.make_step(model, SGD, "jit")(*be.put(*batch(CNN, n=512))))
    assert be.memory_peak_mb() > 0
