"""The hand-written backward passes, checked against finite differences (float64) and PyTorch's autograd; the
rest of the numpy backend (threads, loader, save/load). Cross-framework logits and optimizer steps are in
test_equivalence.py."""
from __future__ import annotations

import numpy as np
import pytest
import threadpoolctl
import torch

from pipeline import backends, params, spec as specs
from pipeline.backends.numpy import layers as nl
from pipeline.backends.base import Feed
from pipeline.backends.torch.backend import from_native
from tests.conftest import ROOT

nb = backends.create("numpy", 2, "cpu", 0, "fp32")
tb = backends.create("torch", 2, "cpu", 0, "fp32")
RNG = np.random.default_rng(7)
MASKS = np.random.default_rng(3)  # the dropout layer's generator in the layer tests


def numeric_grad(f, a: np.ndarray, picks: int = 12, h: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of scalar f() with respect to `picks` random entries of `a` (changed in place)."""
    idx = RNG.choice(a.size, size=min(picks, a.size), replace=False)
    out = np.empty(len(idx))
    flat = a.reshape(-1)
    for k, i in enumerate(idx):
        keep = flat[i]
        flat[i] = keep + h
        up = f()
        flat[i] = keep - h
        down = f()
        flat[i] = keep
        out[k] = (up - down) / (2 * h)
    return idx, out


def f64(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


LAYERS = {  # (layer, input shape), float64; odd and non-square sizes catch index mix-ups
    "linear": (lambda: nl.Linear(f64(6, 4), f64(4)), (5, 6)),
    "conv3": (lambda: nl.Conv2D(f64(3, 3, 2, 3), f64(3)), (2, 5, 4, 2)),
    "conv5": (lambda: nl.Conv2D(f64(5, 5, 1, 2), f64(2)), (2, 6, 7, 1)),
    "maxpool": (lambda: nl.MaxPool(2), (2, 5, 7, 3)),
    "reshape": (lambda: nl.Reshape(), (2, 3, 4, 2)),
    "relu": (lambda: nl.ReLU(), (4, 7)),
    "tanh": (lambda: nl.Tanh(), (4, 7)),
    "sigmoid": (lambda: nl.Sigmoid(), (4, 7)),
    "dropout": (lambda: nl.DropOut(0.4, MASKS), (4, 7)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_backward_matches_finite_differences(name):
    """loss = sum(forward(x) * r): backward(r) must give d loss / d x and d loss / d weights."""
    make, shape = LAYERS[name]
    layer, x = make(), f64(*shape)

    def loss() -> float:
        reseed()  # dropout draws the same mask on every call
        return float((layer.forward(x, True) * r).sum())

    def reseed() -> None:
        MASKS.bit_generator.state = np.random.default_rng(3).bit_generator.state
    reseed()
    r = f64(*layer.forward(x, True).shape)
    loss()
    dx = layer.backward(r)
    grads = getattr(layer, "grads", [])
    assert dx.shape == x.shape and len(grads) == len(layer.params)
    for analytic, a in [(dx, x)] + list(zip(grads, layer.params)):
        idx, numeric = numeric_grad(loss, a)
        np.testing.assert_allclose(analytic.reshape(-1)[idx], numeric, rtol=1e-5, atol=1e-7)


def test_softmax_cross_entropy_backward_matches_finite_differences():
    fn, z, y = nl.SoftmaxCrossEntropy(), f64(6, 10) * 3, RNG.integers(0, 10, 6)
    fn.forward(z, y)
    idx, numeric = numeric_grad(lambda: fn.forward(z, y), z, picks=30)
    fn.forward(z, y)
    np.testing.assert_allclose(fn.backward().reshape(-1)[idx], numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("spec", [specs.mlp((5, 4, 1), 10, [7, 6], "sigmoid", 0.0),
                                  specs.mlp((5, 4, 1), 10, [7], "tanh", 0.0),
                                  specs.cnn((6, 5, 2), 10, [3, 4], 3, 8, 0.0)], ids=["mlp-sigmoid", "mlp-tanh", "cnn"])
def test_whole_network_gradients_match_finite_differences(spec):
    weights = [w.astype(np.float64) for w in specs.init_weights(spec, 0)]
    for b in weights[1::2]:
        b += RNG.normal(size=b.shape) * 0.1  # non-zero biases: their gradients are tested too
    net, fn = nl.Net(spec, weights, MASKS), nl.SoftmaxCrossEntropy()
    x, y = f64(4, *spec.in_shape), RNG.integers(0, 10, 4)
    fn.forward(net.forward(x, True), y)
    grads = net.backward(fn.backward())
    assert [g.shape for g in grads] == spec.param_shapes()
    for g, w in zip(grads, net.params):
        idx, numeric = numeric_grad(lambda: fn.forward(net.forward(x, True), y), w)
        np.testing.assert_allclose(g.reshape(-1)[idx], numeric, rtol=1e-5, atol=1e-8)


def spec_networks() -> dict[str, specs.ModelSpec]:
    """The networks params.yaml defines, at MNIST's and digits' sizes, without dropout (torch's masks are its
    own; dropout's backward is checked above)."""
    p = params.load(ROOT / "params.yaml")
    out = {}
    for shape in ((28, 28, 1), (8, 8, 1)):
        for model in specs.MODELS:
            s = params.model_spec(p, model, shape, 10)
            out[f"{model}-{shape[0]}"] = specs.ModelSpec(s.name, s.in_shape, s.classes,
                                                         tuple(x for x in s.layers if not isinstance(x, specs.Dropout)))
    return out


@pytest.mark.parametrize("name", spec_networks())
def test_gradients_match_torch_autograd_on_the_spec_networks(name):
    s = spec_networks()[name]
    w = specs.init_weights(s, 1)
    x, y = RNG.normal(size=(16, *s.in_shape)).astype(np.float32), RNG.integers(0, 10, 16)
    net, fn = nb.build(s, w), nl.SoftmaxCrossEntropy()
    loss = fn.forward(net.forward(x, True), y)
    ours = net.backward(fn.backward())
    model = tb.build(s, w)
    ref = torch.nn.functional.cross_entropy(model(tb.put(x, y)[0]), torch.from_numpy(y))
    ref.backward()
    theirs = from_native(s, [p.grad.numpy() for p in model.parameters()])  # canonical layouts
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())
        assert np.abs(b).max() > 0  # every layer really received a gradient


def test_max_pool_ties_send_the_gradient_to_the_first_maximum_like_torch():
    """Constant regions (an image's background after a conv and ReLU) tie in every window: the gradient must go
    to one input, not be copied to all four."""
    x = np.ones((1, 4, 4, 1), np.float32)
    pool = nl.MaxPool(2)
    pool.forward(x, True)
    dx = pool.backward(np.ones((1, 2, 2, 1), np.float32))
    xt = torch.ones(1, 1, 4, 4, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).sum().backward()
    np.testing.assert_array_equal(dx[0, :, :, 0], xt.grad[0, 0].numpy())
    assert dx.sum() == 4


def test_setup_sets_the_blas_threads_it_reports():
    try:
        got = backends.create("numpy", 1, "cpu", 0, "fp32").info
        blas = [b for b in threadpoolctl.threadpool_info() if b["user_api"] == "blas"]
        assert got["intra_op_threads"] == 1 and blas and all(b["num_threads"] == 1 for b in blas)
    finally:
        backends.create("numpy", 2, "cpu", 0, "fp32")
    assert backends.create("numpy", 2, "cpu", 0, "fp32").info["intra_op_threads"] == 2


def test_cuda_is_refused_in_one_line(monkeypatch):
    from pipeline.probe import telemetry
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 1)  # a GPU the numpy backend cannot use
    with pytest.raises(params.ParamsError, match=r"^params\.yaml: device: cuda, but the numpy backend sees no GPU: "
                                                 r"it runs on the CPU only; or set device: cpu$"):
        backends.create("numpy", 2, "cuda", 0, "fp32")


def test_loader_batches_do_not_depend_on_the_worker_count():
    images = RNG.integers(0, 256, (40, 6, 5), dtype=np.uint8)
    labels = np.arange(40) % 10
    got = {}
    for workers in (0, 2):
        it = nb.make_loader(Feed(images, labels, 0.5, 0.25, 8, 1, 0, False, False, 2), workers)
        got[workers] = [next(it) for _ in range(7)]  # past one epoch (5 batches): a reshuffle
    for (x0, y0), (x2, y2) in zip(got[0], got[2]):
        np.testing.assert_array_equal(x0, x2)
        np.testing.assert_array_equal(y0, y2)
    x, y = got[0][0]
    assert x.shape == (8, 6, 5, 1) and x.dtype == np.float32 and y.dtype == np.int64
    # unshifted pixels are normalised: (v / 255 - mean) / std; every value is one of those or the zero padding
    allowed = np.append((np.arange(256) / 255.0 - 0.5) / 0.25, 0.0)
    assert np.abs(x.reshape(-1, 1) - allowed).min(axis=1).max() <= 1e-5
    assert (x == 0).any() and (x != 0).mean() > 0.5  # shifted (some padding), mostly image
    epoch = np.concatenate([b[1] for b in got[0][:5]])
    assert sorted(epoch) == sorted(labels)  # one epoch sees every sample once


def test_save_and_load_round_trip(tmp_path):
    s = specs.cnn((8, 8, 1), 10, [4], 3, 12, 0.0)
    w = specs.init_weights(s, 2)
    path = tmp_path / f"m{nb.MODEL_SUFFIX}.tmp"  # a temporary name, as files.atomic_path gives
    nb.save(nb.build(s, w), path)
    back = nb.get_weights(nb.load(s, path), s)
    assert path.exists() and specs.digest(back) == specs.digest(w)


def test_training_does_not_change_the_callers_weights():
    s = specs.mlp((4, 4, 1), 10, [8], "relu", 0.0)
    w = specs.init_weights(s, 0)
    before = specs.digest(w)
    model = nb.build(s, w)
    nb.make_step(model, specs.Optim("sgd", 0.1, 0, 0.9, 0.999, 1e-8), nb.DEFAULT)(
        *nb.put(RNG.normal(size=(8, 4, 4, 1)).astype(np.float32), np.arange(8)))
    assert specs.digest(w) == before != specs.digest(nb.get_weights(model, s))
