"""What only a CUDA GPU can show, PyTorch only (a lent GPU box carries no TensorFlow): the device speedometer,
precision read back, data resident, memory peaks, and the GPU variants doing the default's maths. Skipped, and
said, without a GPU; `python -m pytest tests/test_cuda.py` is the GPU session's first check."""
import numpy as np
import pytest
import torch

from pipeline import backends, spec as specs
from pipeline.probe import speedo, telemetry
from tests.conftest import cuda

pytestmark = cuda
MNIST_CNN = specs.cnn((28, 28, 1), 10, [32, 64], 5, 1024, 0.0)


def batch(spec, n, seed=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *spec.in_shape)).astype(np.float32), rng.integers(0, 10, n)


def test_on_a_gpu_the_speedometer_is_a_device_matmul_at_the_precision_in_use():
    fp32, bf16 = (backends.create("torch", 1, "cuda", 0, p) for p in ("fp32", "bf16"))
    assert fp32.speedometer().startswith("torch matmul 4096x4096 fp32 on ")
    assert bf16.speedometer().startswith("torch matmul 4096x4096 bf16 on ")
    assert bf16.calibrate(1) > fp32.calibrate(1) > 10 * speedo.gemm_gflops(1)  # a GPU, not the host


def test_telemetry_names_and_reads_the_gpu_pytorch_computes_on():
    # NVML's numbering is not CUDA's; the UUID is the one name both give the same GPU
    props = torch.cuda.get_device_properties(0)
    assert telemetry.used_name() == f"{props.name} (GPU-{props.uuid})"
    torch.zeros(1, device="cuda")  # this process now computes on it: NVML lists it, unless a container hides it
    got = telemetry.read()
    assert got["sm_clock_mhz"] > 0 and got["memory_used_mb"] > 0
    assert got["processes"] >= 1 or got["processes"] != got["processes"]  # NaN: processes not visible here


def test_precision_is_set_and_read_back_on_the_gpu():
    tf32 = backends.create("torch", 1, "cuda", 0, "tf32")
    assert tf32.info["precision"] == "tf32" and torch.backends.cuda.matmul.allow_tf32
    fp32 = backends.create("torch", 1, "cuda", 0, "fp32")  # PyTorch's own defaults differ: both off, checked
    assert fp32.info["precision"] == "fp32"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_fp16_trains_with_its_loss_scale_on_the_gpu_and_its_speedometer_runs_in_float16():
    from pipeline.spec import LOSS_SCALE
    fp16 = backends.create("torch", 1, "cuda", 0, "fp16")
    assert fp16.info["precision"] == "fp16" and fp16.speedometer().startswith("torch matmul 4096x4096 fp16 on ")
    assert fp16.calibrate(1) > 10 * speedo.gemm_gflops(1)
    x, y = batch(MNIST_CNN, 64)
    model = fp16.build(MNIST_CNN, specs.init_weights(MNIST_CNN, 0))
    step = fp16.make_step(model, specs.Optim("adam", 1e-3, 0.0, 0.9, 0.999, 1e-8), fp16.DEFAULT)
    losses = [float(fp16.numpy(step(*fp16.put(x, y))[0])) for _ in range(20)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # the same batch again: it learns it
    assert step.scaler.get_scale() <= LOSS_SCALE  # halved by overflows only, never grown in 20 steps


def test_data_stays_on_the_device_and_memory_peaks_grow_with_the_batch():
    g = backends.create("torch", 1, "cuda", 0, "fp32")
    x, y = batch(MNIST_CNN, 1024)
    data = g.put(x, y)
    assert data[0].device.type == data[1].device.type == "cuda"
    assert all(xb.device.type == "cuda" for xb, _ in g.batches(data, specs.batch_order(1024, 0, 0), 256))
    o = specs.Optim("adam", 1e-3, 0.9, 0.9, 0.999, 1e-8)
    peaks = {}
    for bs in (64, 512):
        g.reset_memory_peak()
        g.train_timings(g.build(MNIST_CNN, specs.init_weights(MNIST_CNN, 0)), o, data,
                        specs.batch_order(1024, 0, 0), "eager", bs, 2, 2, 1)
        peaks[bs] = g.memory_peak_mb()
    # the resident data (3 MiB) is in both; batch 512's first conv output alone is 98 MiB (32 x 28 x 28 floats)
    assert peaks[512] > peaks[64] + 50 > 50


@pytest.mark.parametrize("variant", ["channels_last", "cuda_graphs"])
def test_gpu_variants_train_as_eager_does(variant):
    """Momentum SGD (updates linear in the gradients, so kernel rounding stays rounding) leaves the same weights;
    Adam, the capturable one CUDA graphs need, gives the same losses step by step."""
    g = backends.create("torch", 2, "cuda", 0, "fp32")
    s = specs.cnn((12, 10, 1), 10, [4, 6], 3, 20, 0.0)
    w = specs.init_weights(s, 0)
    x, y = batch(s, 32)
    data, order = g.put(x, y), specs.batch_order(32, 0, 0)
    sgd = specs.Optim("momentum", 0.05, 0.9, 0.9, 0.999, 1e-8)
    after = {}
    for v in ("eager", variant):
        model = g.build(s, w)
        g.train_timings(model, sgd, data, order, v, 8, 3, 2, 1)  # 5 steps
        after[v] = g.get_weights(model, s)
    for a, b in zip(after["eager"], after[variant]):
        assert np.abs(a - b).max() <= 1e-4
    adam = specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-8)
    losses = {}
    for v in ("eager", variant):
        step = g.make_step(g.build(s, w), adam, v)
        losses[v] = [float(g.numpy(step(*b)[0])) / 8 for b in list(g.batches(data, order, 8)) * 2]
    assert losses[variant] == pytest.approx(losses["eager"], rel=1e-3)


def test_a_forked_child_starts_cuda_itself_and_measures_on_the_gpu(prepared):
    # its zygote imported torch and touched no device, so CUDA starts in each child, as PyTorch requires of a fork
    from pipeline.measure import zygote
    from pipeline.measure.zygote import Zygotes
    from tests.conftest import write_params
    from tests.test_zygote import TINY
    pp = write_params(prepared / "params.yaml", **TINY, device="cuda")
    with Zygotes(fork=True, gpu_visible=True) as via:
        got = [zygote.spawn(via, prepared / "prepared.npz", pp, "torch", "round", 1, f"round {i} torch")[0]
               for i in (1, 2)]
    assert all(r.child_forked and r.status == "ok" and r.device not in ("cpu", "") for r in got)
    assert all(r.speedometer.startswith("torch matmul 4096x4096 fp32 on ") for r in got)


def test_a_child_on_the_gpu_imports_nothing_of_torch_that_its_zygote_could_have(prepared):
    # what PyTorch imports only once CUDA is in use belongs in Backend.LAZY_IMPORTS too
    from tests.test_zygote import imported_by_child
    assert imported_by_child(prepared, "torch", device="cuda") == []
