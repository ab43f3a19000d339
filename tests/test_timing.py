import time

import numpy as np
import pytest

from pipeline.backends.base import Step
from pipeline.backends.numpy.backend import NumpyBackend
from pipeline.probe import stats, timing


class Clock:
    """A scripted clock: work 'takes' what the test says it does, whatever the machine is doing meanwhile."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_warmup_calls_are_not_timed():
    calls, clock = [], Clock()

    def run(k):
        for _ in range(k):
            clock.sleep(0.3 if not calls else 0.002)  # the first call is slow, as tracing/compilation is
            calls.append(1)
    per_step = timing.repeat(run, warmup=1, steps=3, repeats=3, clock=clock)
    assert len(calls) == 1 + 3 * 3
    assert per_step == pytest.approx([0.002] * 3)


def test_a_repeat_shorter_than_min_s_is_discarded_and_run_again_with_more_steps():
    """GPU-like steps (1 ms): 3 of them cannot be timed against a 50 ms floor, so the first repeat is thrown away
    and every timed one runs long enough; steps that already last the floor (CPU-like) run as asked."""
    sizes, clock = [], Clock()

    def run(k):
        sizes.append(k)
        clock.sleep(0.001 * k)
    per_step = timing.repeat(run, warmup=1, steps=3, repeats=2, min_s=0.05, clock=clock)
    # warmup, the discarded short repeat, then two timed ones of 3 x 1.2 x 50 / 3 = 60 steps (>= 50 ms each)
    assert sizes == [1, 3, 60, 60]
    assert per_step == pytest.approx([0.001, 0.001])
    sizes.clear()
    timing.repeat(lambda k: (sizes.append(k), clock.sleep(0.03 * k)), warmup=0, steps=2, repeats=2, min_s=0.05,
                  clock=clock)
    assert sizes == [2, 2]


def test_latencies_skip_warmup_and_time_each_call():
    n, clock = [0], Clock()

    def call():
        n[0] += 1
        clock.sleep(0.2 if n[0] == 1 else 0.001 * n[0])
    lat = timing.latencies(call, warmup=1, calls=20, clock=clock)
    assert n[0] == 21 and lat == pytest.approx([0.001 * k for k in range(2, 22)])  # each call's own time, in order


def test_spread_statistics():
    s = stats.spread([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.q1 == 2.0 and s.q3 == 4.0 and s.iqr == 2.0 and s.n == 5
    assert s.cv_pct == pytest.approx(100 * np.std([1, 2, 3, 4, 100], ddof=1) / 22)
    assert stats.spread([5.0]).cv_pct == 0.0  # one value: no spread measured


class Scripted(NumpyBackend):
    """A backend whose training step is the test's function (the timing logic is the contract's own)."""

    def __init__(self, step):
        super().__init__(1, "cpu", 0, "fp32")
        self.step = step

    def make_step(self, model, optim, variant):
        return Step(self.step, None, lambda lr: None)


def test_step_timings_follow_the_order_in_full_batches_and_time_the_first_step_apart():
    seen, clock = [], Clock()
    data = (np.arange(10), np.arange(10))
    order = np.array([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])

    def step(x, y):
        seen.append(list(x))
        clock.sleep(0.2 if len(seen) == 1 else 0.001)  # the first step compiles
    first, per_step = Scripted(step).train_timings(None, None, data, order, "numpy", batch_size=4, warmup=2, steps=3,
                                                   repeats=3, clock=clock)
    assert first == pytest.approx(0.2) and per_step == pytest.approx([0.001] * 3)
    assert len(seen) == 2 + 3 * 3
    # full batches only (the last 2 samples would make a partial batch), in the given order, cycling
    assert seen[:3] == [[3, 1, 4, 0], [5, 9, 2, 6], [3, 1, 4, 0]]


def test_a_batch_larger_than_the_training_set_is_a_params_error_not_a_hang():
    from pipeline.errors import ParamsError

    data = (np.arange(10), np.arange(10))
    be = Scripted(lambda x, y: None)
    with pytest.raises(ParamsError, match=r"^params.yaml: train.batch_size: 16 is more than the 10 training images"):
        next(be.batches(data, np.arange(10), 16))
    with pytest.raises(ParamsError):  # the bench's endless cycle stops at once instead of spinning
        be.train_timings(None, None, data, np.arange(10), "numpy", 16, 2, 1, 1)


def test_keras_fit_lengthens_a_short_repeat_as_the_step_variants_do():
    """Model.fit times whole epochs, not timing.repeat's calls: its repeats must last min_s all the same."""
    from pipeline import backends, spec as specs
    be = backends.create("tensorflow", 1, "cpu", 0, "fp32")
    s = specs.mlp((8, 8, 1), 10, [16], "relu", 0.0)
    rng = np.random.default_rng(0)
    data = be.put(rng.normal(size=(64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64))
    o = specs.Optim("momentum", 0.05, 0.9, 0.9, 0.999, 1e-8)
    model = be.build(s, specs.init_weights(s, 0))
    t0 = time.perf_counter()
    _, per_step = be.train_timings(model, o, data, specs.batch_order(64, 0, 0), "fit", 8, 2, 2, 2, 0.2)
    # 2 steps of this MLP take milliseconds: without the rule the two repeats end within 0.1 s
    assert len(per_step) == 2 and time.perf_counter() - t0 >= 0.4
