"""`precision` means the same in every framework: bf16 is mixed precision (bfloat16 compute, float32 weights and
loss) in both, tf32 exists only on CUDA GPUs, and what a backend really runs with is read back and checked."""
import numpy as np
import pytest

from pipeline import backends, spec as specs
from pipeline.backends.base import check_precision, refuse_precision
from pipeline.errors import ParamsError

SPECS = {"mlp": specs.mlp((8, 8, 1), 10, [32, 16], "relu", 0.0),
         "cnn": specs.cnn((12, 10, 1), 10, [4, 6], 3, 20, 0.0)}
BF16_EPS = 2.0 ** -8  # bfloat16 keeps 8 significant bits: one rounding moves a value by at most 2^-8 of it
fp32 = {fw: backends.create(fw, 2, "cpu", 0, "fp32") for fw in ("torch", "tensorflow")}
bf16 = {fw: backends.create(fw, 2, "cpu", 0, "bf16") for fw in ("torch", "tensorflow")}


def logits(be, s, x):
    w = specs.init_weights(s, 0)
    model = be.build(s, w)
    out = be.numpy(be.make_predict(model, be.DEFAULT)(be.put(x, np.zeros(len(x), np.int64))[0]))
    return out, be.get_weights(model, s)


@pytest.mark.parametrize("name", SPECS)
def test_bf16_gives_the_same_logits_in_both_frameworks_within_bf16s_own_precision(name):
    s = SPECS[name]
    x = np.random.default_rng(1).normal(size=(32, *s.in_shape)).astype(np.float32)
    t16, tw = logits(bf16["torch"], s, x)
    k16, kw = logits(bf16["tensorflow"], s, x)
    t32, _ = logits(fp32["torch"], s, x)
    k32, _ = logits(fp32["tensorflow"], s, x)
    assert t16.dtype == k16.dtype == np.float32  # logits (and the loss) in float32 at any precision
    for a, b in zip(tw, kw):  # the weights themselves stay float32: mixed precision, not a bf16 model
        assert a.dtype == b.dtype == np.float32
    # Both frameworks round the same inputs and weights to bfloat16 and accumulate in float32; each layer's
    # output is rounded to bfloat16 again, where one float32 ulp of accumulation-order difference can land on the
    # neighbouring bfloat16 value. So the frameworks may differ by a few bf16 roundings of each logit's scale, one
    # per layer with weights: that is the tolerance.
    layers = sum(1 for shape in s.param_shapes() if len(shape) > 1)
    scale = np.abs(t32).max()
    np.testing.assert_allclose(t16, k16, rtol=0, atol=layers * BF16_EPS * scale)
    # and bf16 really ran in each: its logits are off its own float32 ones by more than float32 rounding could
    # explain (a framework silently computing in float32 would fail here, whatever the tolerance above)
    for low, full in ((t16, t32), (k16, k32)):
        assert np.abs(low - full).max() > 100 * np.finfo(np.float32).eps * scale


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "numpy"])
def test_tf32_off_a_cuda_gpu_is_refused_in_one_line_naming_the_key(framework):
    with pytest.raises(ParamsError, match=r"^params.yaml: precision: tf32 runs only on a CUDA GPU \(this backend "
                                          r"runs on cpu\); use fp32 or bf16$"):
        backends.create(framework, 1, "cpu", 0, "tf32")


@pytest.mark.parametrize("precision, gpu, capability, runs", [
    ("fp32", "Tesla P100", (6, 0), True),
    ("tf32", "Tesla V100", (7, 0), False), ("bf16", "Tesla T4", (7, 5), False),  # no TF32/bf16 tensor cores
    ("tf32", "A100", (8, 0), True), ("bf16", "RTX 4090", (8, 9), True), ("bf16", "H100", (9, 0), True),
    ("bf16", "cpu", None, True),  # off a GPU, bf16 is the CPU kernels' (the tests above)
])
def test_tf32_and_bf16_need_ampere_or_newer_where_the_frameworks_would_accept_them_anyway(precision, gpu,
                                                                                         capability, runs):
    # PyTorch and TensorFlow take both switches on a T4 or V100 and run tf32 as fp32, bf16 emulated: a run would be
    # measured under a precision it never used, so each backend asks this before it measures anything
    if runs:
        refuse_precision(precision, gpu, capability)
        return
    with pytest.raises(ParamsError, match=rf"^params.yaml: precision: {precision} needs an NVIDIA GPU of compute "
                                          rf"capability 8.0 or newer \(Ampere and later\); this {gpu} is "
                                          rf"{capability[0]}.{capability[1]}: use fp32$"):
        refuse_precision(precision, gpu, capability)


def test_numpy_refuses_bf16_in_one_line():
    with pytest.raises(ParamsError, match=r"^params.yaml: precision: bf16 is not available in the numpy backend"):
        backends.create("numpy", 1, "cpu", 0, "bf16")


def test_what_a_backend_really_runs_with_is_read_back_and_checked():
    assert {fw: be.info["precision"] for fw, be in bf16.items()} == {"torch": "bf16", "tensorflow": "bf16"}
    assert {fw: be.info["precision"] for fw, be in fp32.items()} == {"torch": "fp32", "tensorflow": "fp32"}
    assert check_precision(fp32["torch"].info, "fp32") == {"precision": "fp32"}
    with pytest.raises(RuntimeError, match="torch runs with precision fp32; asked for bf16"):
        check_precision(fp32["torch"].info, "bf16")


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_a_bf16_training_step_updates_float32_weights_from_the_float32_loss(framework):
    be, s = bf16[framework], SPECS["mlp"]
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, *s.in_shape)).astype(np.float32), rng.integers(0, 10, 16)
    model = be.build(s, specs.init_weights(s, 0))
    step = be.make_step(model, specs.Optim("sgd", 0.1, 0.0, 0.9, 0.999, 1e-8), be.DEFAULT)
    loss, _ = step(*be.put(x, y))
    after = be.get_weights(model, s)
    assert np.isfinite(float(be.numpy(loss))) and all(w.dtype == np.float32 for w in after)
    assert max(np.abs(a - b).max() for a, b in zip(after, specs.init_weights(s, 0))) > 1e-4
