"""The backends against each other: same weights in, same logits and the same optimizer maths out. PyTorch is the
reference each other backend is held to."""
import numpy as np
import pytest

from pipeline import backends, spec as specs
from pipeline.backends.torch import backend as torch_backend
from pipeline.train import loop

tb = backends.create("torch", 2, "cpu", 0, "fp32")
tfb = backends.create("tensorflow", 2, "cpu", 0, "fp32")
nb = backends.create("numpy", 2, "cpu", 0, "fp32")
jb = backends.create("jax", 2, "cpu", 0, "fp32")
ALL = [tb, tfb, nb, jb]
OTHERS = [tfb, nb, jb]  # each checked against torch
name_of = lambda b: b.NAME  # noqa: E731

SPECS = {
    "mlp": specs.mlp((8, 8, 1), 10, [32, 16], "tanh", 0.0),
    "cnn": specs.cnn((12, 10, 1), 10, [4, 6], 3, 20, 0.0),  # non-square: catches H/W mix-ups in the flatten
}


def batch(spec, n=24, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *spec.in_shape)).astype(np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("name", SPECS)
def test_same_parameter_counts_layer_by_layer(name):
    s = SPECS[name]
    w = specs.init_weights(s, 0)
    torch_counts = [p.numel() for p in tb.build(s, w).parameters()]
    tf_counts = [int(np.prod(v.shape)) for v in tfb.build(s, w).weights]
    np_counts = [p.size for p in nb.build(s, w).params]
    jax_counts = [layer[p].size for layer in jb.build(s, w).params.values() for p in ("kernel", "bias")]
    assert torch_counts == tf_counts == np_counts == jax_counts == [int(np.prod(x)) for x in s.param_shapes()]


@pytest.mark.parametrize("name", SPECS)
def test_weights_load_and_read_back_exactly_in_both(name):
    s = SPECS[name]
    w = specs.init_weights(s, 3)
    for be in ALL:
        back = be.get_weights(be.build(s, w), s)
        assert specs.digest(back) == specs.digest(w)


def test_torch_layout_conversion_really_permutes_the_flatten():
    s = SPECS["cnn"]
    w = specs.init_weights(s, 0)
    native = torch_backend.to_native(s, w)
    dense_in = native[4]  # first dense after the flatten, torch (out, in)
    assert not np.array_equal(dense_in, w[4].T)  # (c, h, w) order differs from (h, w, c)
    np.testing.assert_array_equal(torch_backend.from_native(s, native)[4], w[4])


@pytest.mark.parametrize("other", OTHERS, ids=name_of)
@pytest.mark.parametrize("name", SPECS)
def test_same_weights_give_same_logits(name, other):
    s = SPECS[name]
    w = specs.init_weights(s, 0)
    x, y = batch(s)
    lt = loop.predict(tb, tb.make_predict(tb.build(s, w), tb.DEFAULT), tb.put(x, y), 10)
    lf = loop.predict(other, other.make_predict(other.build(s, w), other.DEFAULT), other.put(x, y), 10)
    assert lt.shape == lf.shape == (24, 10)
    assert np.abs(lt - lf).max() <= 1e-4
    assert np.abs(lt).max() > 1e-2  # not trivially equal (e.g. all zeros)


# eps=1e-3 keeps Adam's update away from g/|g| for near-zero gradients, where float rounding differences between
# the frameworks (e.g. a gradient of 1e-12 vs 0) would flip whole lr-sized steps and hide the maths under test.
OPTIMS = [specs.Optim("sgd", 0.05, 0.9, 0.9, 0.999, 1e-3), specs.Optim("momentum", 0.05, 0.9, 0.9, 0.999, 1e-3),
          specs.Optim("adam", 0.01, 0.9, 0.8, 0.99, 1e-3)]


@pytest.mark.parametrize("other", OTHERS, ids=name_of)
@pytest.mark.parametrize("optim", OPTIMS, ids=lambda o: o.name)
@pytest.mark.parametrize("name", SPECS)
def test_optimizer_steps_give_same_weights(name, optim, other):
    s = SPECS[name]
    w = specs.init_weights(s, 0)
    x, y = batch(s)
    mt, mf = tb.build(s, w), other.build(s, w)
    st, sf = tb.make_step(mt, optim, tb.DEFAULT), other.make_step(mf, optim, other.DEFAULT)
    for i in range(3):  # 3 steps: momentum buffers and Adam bias correction both matter after step 1
        lt, ct = st(*tb.take(tb.put(x, y), np.arange(i, 24, 2)))
        lf, cf = sf(*other.take(other.put(x, y), np.arange(i, 24, 2)))
        assert float(lt) == pytest.approx(float(lf), rel=1e-5) and int(ct) == int(cf)
    wt, wf = tb.get_weights(mt, s), other.get_weights(mf, s)
    moved = max(np.abs(a - b).max() for a, b in zip(wt, w))
    assert moved > 1e-3  # the steps did change the weights
    assert max(np.abs(a - b).max() for a, b in zip(wt, wf)) <= 1e-5


def test_keras_builtin_adam_differs_which_is_why_the_backend_subclasses_it():
    import keras
    import tensorflow as tf

    s, o = SPECS["mlp"], OPTIMS[2]
    w = specs.init_weights(s, 0)
    x, y = batch(s)
    mt = tb.build(s, w)
    tb.make_step(mt, o, tb.DEFAULT)(*tb.put(x, y))
    mk = tfb.build(s, w)
    opt = keras.optimizers.Adam(o.lr, o.beta1, o.beta2, o.eps)
    with tf.GradientTape() as tape:
        loss = tfb.loss(tf.constant(y), mk(tf.constant(x), training=True))
    opt.apply_gradients(zip(tape.gradient(loss, mk.trainable_variables), mk.trainable_variables))
    diff = max(np.abs(a - b).max() for a, b in zip(tb.get_weights(mt, s), tfb.get_weights(mk, s)))
    assert diff > 1e-4


def test_training_loops_track_each_other_with_same_batch_order():
    s = SPECS["cnn"]
    w = specs.init_weights(s, 0)
    x, y = batch(s, n=64, seed=2)
    xv, yv = batch(s, n=16, seed=3)
    o = specs.Optim("momentum", 0.02, 0.9, 0.9, 0.999, 1e-8)
    hist = {}
    for be in ALL:
        hist[be.NAME], _ = loop.train(be, be.build(s, w), o, be.put(x, y), be.put(xv, yv), yv, epochs=2,
                                      batch_size=16, eval_batch_size=8, eval_every=4, target=1.1,
                                      stop_at_target=True, seed=0)
    for other in ("tensorflow", "numpy", "jax"):
        for a, b in zip(hist["torch"], hist[other], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert len(hist["torch"]) == 2 and hist["torch"][1]["train_loss"] != hist["torch"][0]["train_loss"]


def test_shared_dropout_masks_make_the_frameworks_take_the_same_steps_and_their_own_masks_would_not():
    """With dropout, each framework's own masks part the trajectories at the first step; the run's shared masks
    (spec.dropout_masks, what the train stage passes) keep them together up to rounding, over many steps."""
    s = specs.mlp((8, 8, 1), 10, [48, 32], "relu", 0.5)
    w = specs.init_weights(s, 0)
    x, y = batch(s, n=96, seed=4)
    xv, yv = batch(s, n=32, seed=5)
    o = specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-8)
    masks = lambda epoch: specs.dropout_masks(s, 0, epoch, 96)  # noqa: E731  # 6 full batches of 16
    kept = masks(0)
    assert [m.shape for m in kept] == [(96, 48), (96, 32)] and 0.45 < 1 - np.mean(kept[0]) < 0.55
    assert [specs.digest([m]) for m in masks(0)] != [specs.digest([m]) for m in masks(1)]  # a new draw each epoch
    curves = {}
    for shared in (True, False):
        for be in ALL:
            be.reseed(0)
            hist, _ = loop.train(be, be.build(s, w), o, be.put(x, y), be.put(xv, yv), yv, epochs=4, batch_size=16,
                                 eval_batch_size=32, eval_every=3, target=1.1, stop_at_target=True, seed=0,
                                 dropout=masks if shared else None)
            curves[shared, be.NAME] = [h["train_loss"] for h in hist]
    for other in ("tensorflow", "numpy", "jax"):  # 24 Adam steps through dropout, evaluated every 3
        assert curves[True, other] == pytest.approx(curves[True, "torch"], rel=1e-4)
        assert curves[False, other] != pytest.approx(curves[False, "torch"], rel=1e-2)  # own masks: apart


def test_shared_masks_are_the_seeds_and_drop_each_unit_with_probability_p():
    s = specs.cnn((8, 8, 1), 10, [4], 3, 200, 0.2)
    a, b = specs.dropout_masks(s, 7, 0, 500), specs.dropout_masks(s, 7, 0, 500)
    assert len(a) == 1 and a[0].dtype == np.uint8 and np.array_equal(a[0], b[0])  # the seed's, nothing else's
    assert abs((1 - a[0].mean()) - 0.2) < 0.01  # 100,000 units
    assert not np.array_equal(a[0], specs.dropout_masks(s, 8, 0, 500)[0])
    with pytest.raises(ValueError, match="flat features"):
        specs.dropout_masks(specs.ModelSpec("x", (4, 4, 1), 10, (specs.Conv(3, 1, 2), specs.Dropout(0.5))), 0, 0, 1)


@pytest.mark.parametrize("be", ALL, ids=name_of)
def test_same_seed_reruns_give_the_same_history_with_dropout_on(be):
    s = specs.mlp((8, 8, 1), 10, [32], "relu", 0.5)
    x, y = batch(s, n=64, seed=4)
    o = specs.Optim("adam", 1e-2, 0.9, 0.9, 0.999, 1e-8)
    runs = []
    for seed in (0, 0, 1):
        be.reseed(seed)
        runs.append(loop.train(be, be.build(s, specs.init_weights(s, 0)), o, be.put(x, y), be.put(x, y), y,
                               epochs=2, batch_size=16, eval_batch_size=64, eval_every=4, target=1.1,
                               stop_at_target=True, seed=0)[0])
    losses = [[h["train_loss"] for h in r] for r in runs]
    # Identical here; the 1e-9 margin only absorbs a thread pool summing in another order, far below the
    # seed-to-seed difference asserted next.
    assert losses[0] == pytest.approx(losses[1], rel=1e-9, abs=0)
    assert losses[0] != pytest.approx(losses[2], rel=1e-4)  # the seed really drives the dropout masks


@pytest.mark.parametrize("be", ALL, ids=name_of)
def test_every_timed_variant_does_the_same_training_work_as_the_default(be):
    """Three steps of each benchmark variant (compiled whole step, XLA, Keras fit) on the same batches in the same
    order (first step, one more warmup, one timed) leave the same weights as the default path's."""
    s = specs.mlp((8, 8, 1), 10, [16], "tanh", 0.0)
    w = specs.init_weights(s, 0)
    x, y = batch(s, n=32, seed=5)
    o = specs.Optim("momentum", 0.05, 0.9, 0.9, 0.999, 1e-8)
    order = specs.batch_order(32, 0, 0)
    after = {}
    for variant in be.variants(["compile", "fit"]):
        model = be.build(s, w)
        first, per_step = be.train_timings(model, o, be.put(x, y), order, variant, 8, 2, 1, 1)  # 3 steps
        assert first > 0 and len(per_step) == 1
        after[variant] = be.get_weights(model, s)
    assert set(after) == {"torch": {"eager", "compile"}, "tensorflow": {"function", "xla", "fit"},
                          "numpy": {"numpy"}, "jax": {"jit"}}[be.NAME]
    default = after[be.DEFAULT]
    assert max(np.abs(a - b).max() for a, b in zip(default, w)) > 1e-3  # the steps moved the weights
    for variant, weights in after.items():
        assert max(np.abs(a - b).max() for a, b in zip(weights, default)) <= 1e-5, variant


def test_channels_last_trains_the_cnn_as_eager_does_in_another_memory_layout():
    s = SPECS["cnn"]
    w = specs.init_weights(s, 0)
    x, y = batch(s, n=32, seed=5)
    o = specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-8)
    after, models = {}, {}
    for variant in ("eager", "channels_last"):
        models[variant] = model = tb.build(s, w)
        tb.train_timings(model, o, tb.put(x, y), specs.batch_order(32, 0, 0), variant, 8, 2, 1, 1)  # 3 steps
        after[variant] = tb.get_weights(model, s)
    import torch
    convs = [p for p in models["channels_last"].parameters() if p.ndim == 4 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                         for p in convs)  # the layout really changed ...
    assert max(np.abs(a - b).max() for a, b in zip(after["eager"], w)) > 1e-3
    for a, b in zip(after["eager"], after["channels_last"]):  # ... and the maths did not
        assert np.abs(a - b).max() <= 1e-5
    logits = [tb.numpy(tb.make_predict(models[v], v)(tb.put(x, y)[0])) for v in ("eager", "channels_last")]
    assert np.abs(logits[0] - logits[1]).max() <= 1e-4


def test_a_schedule_gives_every_framework_the_same_rate_at_every_step():
    s = SPECS["cnn"]
    w = specs.init_weights(s, 0)
    x, y = batch(s, n=64, seed=2)
    o = specs.Optim("adam", 0.01, 0.9, 0.9, 0.999, 1e-3, warmup=0.75, decay="cosine")  # 3 of 4 steps an epoch
    seen, hist, final = {}, {}, {}
    for be in ALL:
        calls = seen.setdefault(be.NAME, [])
        model = be.build(s, w)
        hist[be.NAME], _ = loop.train(Recording(be, calls), model, o, be.put(x, y), be.put(x, y), y, epochs=2,
                                      batch_size=16, eval_batch_size=64, eval_every=4, target=1.1,
                                      stop_at_target=True, seed=0)
        final[be.NAME] = be.get_weights(model, s)
    total = 2 * (64 // 16)
    assert seen["torch"] == seen["tensorflow"] == seen["numpy"] == seen["jax"] == [specs.lr_at(o, k, total, 4)
                                                                               for k in range(total)]
    assert seen["torch"][0] < seen["torch"][2] == 0.01 > seen["torch"][-1]  # warmed up, then decayed
    for other in ("tensorflow", "numpy", "jax"):
        for a, b in zip(hist["torch"], hist[other], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert max(np.abs(a - b).max() for a, b in zip(final["torch"], final[other])) <= 1e-4


class Recording:
    """A backend whose steps record every rate the loop sets on them."""

    def __init__(self, be, calls: list):
        self.be, self.calls = be, calls

    def __getattr__(self, name):
        return getattr(self.be, name)

    def make_step(self, *args):
        step = self.be.make_step(*args)
        real = step.set_lr
        step.set_lr = lambda lr: (self.calls.append(lr), real(lr))
        return step


@pytest.mark.parametrize("be", ALL, ids=name_of)
def test_set_lr_really_changes_the_step(be):
    s = SPECS["mlp"]
    x, y = batch(s)
    o = specs.Optim("sgd", 0.05, 0.0, 0.9, 0.999, 1e-8)
    moved = []
    for lr in (0.05, 0.0):
        model = be.build(s, specs.init_weights(s, 0))
        step = be.make_step(model, o, be.DEFAULT)
        step.set_lr(lr)
        step(*be.put(x, y))
        moved.append(max(np.abs(a - b).max() for a, b in zip(be.get_weights(model, s), specs.init_weights(s, 0))))
    assert moved[0] > 1e-3 and moved[1] == 0.0


def test_torch_momentum_buffers_made_before_the_first_step_update_as_lazily_made_ones():
    """The buffers start at zero outside any step (a CUDA graph must not own them): every update is PyTorch's own
    lazily-initialised SGD's, bit for bit."""
    import torch
    be = backends.create("torch", 1, "cpu", 0, "fp32")
    s = SPECS["cnn"]
    x, y = batch(s, n=16, seed=5)
    xb, yb = be.put(x, y)
    o = specs.Optim("momentum", 0.05, 0.9, 0.9, 0.999, 1e-8)
    ours, lazy = (be.build(s, specs.init_weights(s, 0)) for _ in "ab")
    opts = [torch_backend.make_optimizer(ours, o), torch.optim.SGD(lazy.parameters(), lr=0.05, momentum=0.9)]
    assert all(not b.any() for b in (opts[0].state[p]["momentum_buffer"] for p in ours.parameters()))
    assert not opts[1].state  # PyTorch's own makes them inside the first step
    for model, opt in zip((ours, lazy), opts):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    for a, b in zip(ours.parameters(), lazy.parameters(), strict=True):
        assert torch.equal(a, b)
