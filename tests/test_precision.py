"""`precision` means the same in every framework: bf16 is mixed precision (bfloat16 compute, float32 weights and
loss) in both, tf32 exists only on CUDA GPUs, and what a backend really runs with is read back and checked."""
import numpy as np
import pytest

from pipeline import backends, spec as specs
from pipeline.backends.base import check_precision, refuse_precision
from pipeline.errors import ParamsError

SPECS = {"mlp": specs.mlp((8, 8, 1), 10, [32, 16], "relu", 0.0),
         "cnn": specs.cnn((12, 10, 1), 10, [4, 6], 3, 20, 0.0)}
# one rounding moves a value by at most 2^-8 of it in bfloat16 (8 significant bits), 2^-11 in float16 (11)
EPS = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
fp32 = {fw: backends.create(fw, 2, "cpu", 0, "fp32") for fw in ("torch", "tensorflow")}
bf16 = {fw: backends.create(fw, 2, "cpu", 0, "bf16") for fw in ("torch", "tensorflow")}
fp16 = {fw: backends.create(fw, 2, "cpu", 0, "fp16") for fw in ("torch", "tensorflow")}
HALF = {"bf16": bf16, "fp16": fp16}


def logits(be, s, x):
    w = specs.init_weights(s, 0)
    model = be.build(s, w)
    out = be.numpy(be.make_predict(model, be.DEFAULT)(be.put(x, np.zeros(len(x), np.int64))[0]))
    return out, be.get_weights(model, s)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", SPECS)
def test_16_bits_give_the_same_logits_in_both_frameworks_within_the_formats_own_precision(name, precision):
    s = SPECS[name]
    x = np.random.default_rng(1).normal(size=(32, *s.in_shape)).astype(np.float32)
    t16, tw = logits(HALF[precision]["torch"], s, x)
    k16, kw = logits(HALF[precision]["tensorflow"], s, x)
    t32, _ = logits(fp32["torch"], s, x)
    k32, _ = logits(fp32["tensorflow"], s, x)
    assert t16.dtype == k16.dtype == np.float32  # logits (and the loss) in float32 at any precision
    for a, b in zip(tw, kw):  # the weights themselves stay float32: mixed precision, not a bf16 model
        assert a.dtype == b.dtype == np.float32
    # Both frameworks round the same inputs and weights to 16 bits and accumulate in float32; each layer's
    # output is rounded to 16 bits again, where one float32 ulp of accumulation-order difference can land on the
    # neighbouring 16-bit value. So the frameworks may differ by a few roundings of each logit's scale, one per
    # layer with weights: that is the tolerance.
    layers = sum(1 for shape in s.param_shapes() if len(shape) > 1)
    scale = np.abs(t32).max()
    np.testing.assert_allclose(t16, k16, rtol=0, atol=layers * EPS[precision] * scale)
    # and 16 bits really ran in each: its logits are off its own float32 ones by more than float32 rounding could
    # explain (a framework silently computing in float32 would fail here, whatever the tolerance above)
    for low, full in ((t16, t32), (k16, k32)):
        assert np.abs(low - full).max() > 100 * np.finfo(np.float32).eps * scale


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "numpy", "jax"])
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


def loss_scale(step) -> float:
    """The step's current fp16 loss scale: PyTorch's GradScaler, TensorFlow's LossScaleOptimizer."""
    return step.scaler.get_scale() if step.scaler is not None else float(step.optimizer.dynamic_scale.numpy())


def updates(be, s, x, y, optim, steps=1):
    """(the Step, each weight's change) after `steps` updates on (x, y) from the spec's seed-0 weights."""
    w0 = specs.init_weights(s, 0)
    model = be.build(s, w0)
    step = be.make_step(model, optim, be.DEFAULT)
    for _ in range(steps):
        be.sync(step(*be.put(x, y))[0])
    return step, [a - b for a, b in zip(be.get_weights(model, s), w0)]


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_fp16_scales_the_loss_unscales_the_update_and_skips_a_non_finite_one(framework):
    from pipeline.spec import LOSS_SCALE
    s, sgd = SPECS["mlp"], specs.Optim("sgd", 0.01, 0.0, 0.9, 0.999, 1e-8)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(16, *s.in_shape)).astype(np.float32), rng.integers(0, 10, 16)
    _, exact = updates(fp32[framework], s, x, y, sgd)
    step, half = updates(fp16[framework], s, x, y, sgd)
    # plain SGD: the update is lr x the gradient, so it shows the unscaling (2^15 too big without it); fp16's
    # forward and backward pass leave it within a few percent of the fp32 update
    for got, ref in zip(half, exact):
        np.testing.assert_allclose(got, ref, rtol=0, atol=0.05 * np.abs(ref).max())
    assert loss_scale(step) == LOSS_SCALE  # a finite step keeps the scale
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf  # an overflow, as too large a scale makes one (the next test's CNN at first)
    step, skipped = updates(fp16[framework], s, bad, y, sgd)
    assert all(not np.any(d) for d in skipped)  # no update at all
    assert loss_scale(step) == LOSS_SCALE / 2


def test_fp16_loss_scale_grows_and_backs_off_alike_and_a_skipped_step_is_not_counted(monkeypatch):
    from pipeline.backends.tensorflow import optim as tensorflow_optim
    from pipeline.backends.torch import backend as torch_backend
    monkeypatch.setattr(torch_backend, "LOSS_SCALE_GROWTH", 2)  # both frameworks read the shared setting
    monkeypatch.setattr(tensorflow_optim, "LOSS_SCALE_GROWTH", 2)
    s, adam = SPECS["mlp"], specs.Optim("adam", 1e-3, 0.0, 0.9, 0.999, 1e-8)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(16, *s.in_shape)).astype(np.float32), rng.integers(0, 10, 16)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    seen = {}
    for fw, be in fp16.items():
        model = be.build(s, specs.init_weights(s, 0))
        step = be.make_step(model, adam, be.DEFAULT)
        scales = []
        for xb in (x, x, bad, x):
            be.sync(step(*be.put(xb, y))[0])
            scales.append(loss_scale(step))
        opt = step.optimizer
        count = int(opt.iterations.numpy()) if fw == "tensorflow" else \
            int(opt.state[next(iter(model.parameters()))]["step"])
        seen[fw] = (scales, count)
    # 2 finite steps double the scale, the overflow halves it and is skipped: Adam counted 3 updates, not 4
    assert seen["torch"] == seen["tensorflow"] == ([2.0 ** 15, 2.0 ** 16, 2.0 ** 15, 2.0 ** 15], 3)


def test_fp16_overflows_on_the_same_steps_in_both_frameworks_and_then_trains_alike():
    # this CNN's scaled gradients pass float16's range at 2^15 and 2^14: each framework skips those two updates,
    # halving the scale twice, then trains at 2^13; from the same weights both follow the same path
    s, sgd = SPECS["cnn"], specs.Optim("sgd", 0.01, 0.0, 0.9, 0.999, 1e-8)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(16, *s.in_shape)).astype(np.float32), rng.integers(0, 10, 16)
    paths = {}
    for fw, be in fp16.items():
        model = be.build(s, specs.init_weights(s, 0))
        step, scales, weights = be.make_step(model, sgd, be.DEFAULT), [], []
        for _ in range(5):
            be.sync(step(*be.put(x, y))[0])
            scales.append(loss_scale(step))
            weights.append(be.get_weights(model, s))
        paths[fw] = scales, weights
    assert paths["torch"][0] == paths["tensorflow"][0] == [2.0 ** 14, 2.0 ** 13, 2.0 ** 13, 2.0 ** 13, 2.0 ** 13]
    w0 = specs.init_weights(s, 0)
    for k, (t, f) in enumerate(zip(paths["torch"][1], paths["tensorflow"][1])):
        moved = max(np.abs(a - b).max() for a, b in zip(t, w0))
        assert (moved == 0) == (k < 2)  # the two skipped updates changed nothing
        for a, b in zip(t, f):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * max(moved, 1e-3))


def test_fp16_variants_whose_whole_step_is_compiled_keep_or_refuse_the_loss_scale():
    from pipeline.errors import Unavailable
    s = SPECS["mlp"]
    sgd = specs.Optim("sgd", 0.01, 0.0, 0.9, 0.999, 1e-8)
    torch_be, tf_be = fp16["torch"], fp16["tensorflow"]
    # PyTorch's scaler decides each update on the host (cuda_graphs, refused the same way, needs CUDA before that)
    with pytest.raises(Unavailable, match=r"^compile: at fp16 the loss scaler reads its overflow check"):
        torch_be.make_step(torch_be.build(s, specs.init_weights(s, 0)), sgd, "compile")
    # Keras keeps the scale in the optimizer: XLA compiles it into the step, and an overflow still halves it
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(16, *s.in_shape)).astype(np.float32), rng.integers(0, 10, 16)
    x[0, 0, 0, 0] = np.inf
    step = tf_be.make_step(tf_be.build(s, specs.init_weights(s, 0)), sgd, "xla")
    tf_be.sync(step(*tf_be.put(x, y))[0])
    from pipeline.spec import LOSS_SCALE
    assert loss_scale(step) == LOSS_SCALE / 2
