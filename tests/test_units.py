"""Within one child: units timed in turn, each repeat read beside the speedometer, a slow spell costing only the
repeats it touched; and the bench's rules that judge and pair children by their calm speed."""
import math

import numpy as np
import pytest

from pipeline import backends, spec as specs
from pipeline.measure import child, rounds, units
from pipeline.measure.units import Unit
from pipeline.records import Measurement, Rates
from tests.test_bench import P


class Machine:
    """A scripted machine: work and speedometer readings take the time, and read the speed, the script says. `slow`
    holds the [start, end) seconds of spells at `factor` of the calm speed."""

    def __init__(self, slow=(), factor=0.5, calm_gflops=300.0):
        self.now, self.slow, self.factor, self.calm = 0.0, list(slow), factor, calm_gflops
        self.log = []

    def speed(self) -> float:
        return self.factor if any(a <= self.now < b for a, b in self.slow) else 1.0

    def clock(self) -> float:
        return self.now

    def work(self, name: str, seconds: float):
        def run(k):
            self.log.append(name)
            self.now += k * seconds / self.speed()
        return run

    def reading(self) -> float:
        self.log.append("reading")
        self.now += 0.02
        return self.calm * self.speed()


def test_units_are_timed_in_turn_each_repeat_between_two_readings():
    m = Machine()
    us = [Unit("mlp", "train", 128, m.work("train", 0.01), calls=5), Unit("mlp", "infer", 512, m.work("infer", 0.02))]
    readings = units.interleave(us, m.reading, lambda _: None, wanted=3, max_drift=0.25, max_s=60, clock=m.clock)
    assert m.log == ["reading"] + ["train", "reading", "infer", "reading"] * 3  # round-robin, a reading between
    assert len(readings) == 7 and all(len(u.per_call_s) == len(u.before) == len(u.after) == 3 for u in us)
    assert us[0].per_call_s == pytest.approx([0.01] * 3) and us[0].before == us[0].after == [300.0] * 3
    r = units.rates(us[0], units.calm_level(readings), 0.25, wanted=3)
    assert r.samples_per_s == pytest.approx(128 / 0.01) and r.repeats == 3


def test_a_slow_spell_costs_the_repeats_it_touched_and_the_child_waits_for_calm_ones():
    # the machine at half speed from 0.1 s to 0.6 s: the repeats in it read slow, are left out, and more are taken
    m = Machine(slow=[(0.1, 0.6)])
    u = Unit("cnn", "train", 128, m.work("train", 0.05))
    readings = units.interleave([u], m.reading, lambda _: None, wanted=4, max_drift=0.25, max_s=60, clock=m.clock)
    level = units.calm_level(readings)
    ok = units.calm(u, level, 0.25)
    assert level == 300.0 and sum(ok) == 4 and len(ok) > 4  # it went on until four calm repeats
    slow = [t for t, good in zip(u.per_call_s, ok) if not good]
    assert slow and max(slow) == pytest.approx(0.1)  # the spell's own repeats (twice as long) are the ones left out
    assert units.rates(u, level, 0.25, 4).samples_per_s == pytest.approx(128 / 0.05)  # the calm speed, not a mix
    # a unit whose every repeat met the spell has no figure (the bench then gives its round no ratio for it)
    busy = Machine(slow=[(0.0, 1e9)])
    v = Unit("cnn", "train", 128, busy.work("train", 0.05))
    readings = units.interleave([v], busy.reading, lambda _: None, wanted=4, max_drift=0.25, max_s=2,
                                run_level=300.0, clock=busy.clock)  # the run's calm speed, which this child never met
    got = units.rates(v, units.calm_level(readings, 300.0), 0.25, 4)
    assert math.isnan(got.samples_per_s) and got.repeats == 0 and 2 < busy.now < 2.5  # stopped by max_s: no figure


def test_the_calm_level_is_the_upper_decile_of_the_readings_or_the_runs_when_higher():
    readings = [300.0] * 9 + [150.0] * 11  # more than half the child slowed down: its calm speed is still 300
    assert units.calm_level(readings) == pytest.approx(300.0)
    assert units.calm_level([150.0] * 20, floor=300.0) == 300.0  # a child wholly in a spell is judged by the run's


def test_a_real_childs_units_carry_their_repeats_and_readings():
    be = backends.create("numpy", 1, "cpu", 0, "fp32")
    s = specs.mlp((8, 8, 1), 10, [16], "relu", 0.2)
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype(np.float32)
    cfg = P.bench.model_copy(update={"repeats": 3, "infer_batch_sizes": [1, 16], "min_repeat_s": 0.0})
    rows, reading_s = child.interleaved(be, {"mlp": (s, specs.Optim("sgd", 0.1, 0, 0.9, 0.999, 1e-8))},
                                        be.put(x, np.arange(64) % 10), 64, cfg, 8, 0, 1, 0.0)
    (m,) = rows
    assert set(m.samples) == {"train", "infer1", "infer16"}
    n = {k: len(v["per_call_s"]) for k, v in m.samples.items()}
    assert len(set(n.values())) == 1 and n["train"] >= 3 and reading_s > 0  # every unit as many repeats
    train, one, sixteen = (m.samples[k] for k in ("train", "infer1", "infer16"))
    assert one["before_gflops"] == train["after_gflops"]  # train, infer1, infer16, train, ...: one reading between
    assert sixteen["after_gflops"][:-1] == train["before_gflops"][1:]
    every = train["before_gflops"] + sixteen["after_gflops"][-1:]  # each reading, once
    assert m.train.repeats >= 3 and m.calm_level_gflops == pytest.approx(units.calm_level(
        [r for k in ("train", "infer1", "infer16") for r in m.samples[k]["before_gflops"]] + every[-1:]))
    assert math.isfinite(m.rate("train")) and m.first_step_s > 0


def kid(arm, level, rate=100.0, framework="torch", busy=False):
    """A round child's row as the bench judges it: its calm level and one unit's figure."""
    r = Rates(math.nan if busy else rate, rate, rate, 0.0, 0.0, 0 if busy else 6, 1.0)
    return Measurement("mlp", "eager", train=r, infer={512: r}, framework=framework, threads=2, arm=arm,
                       calm_level_gflops=level, calib_before_gflops=level, calib_after_gflops=level,
                       samples={"train": {"per_call_s": [0.01]}})


def test_a_child_is_flagged_for_a_busy_unit_or_a_slow_spell_and_pairs_by_its_frameworks_own_speed():
    assert rounds.judge([kid("torch", 300.0)], 300.0, 0.25) == ""
    assert rounds.judge([kid("torch", 300.0, busy=True)], 300.0, 0.25).startswith(
        "too few calm repeats for mlp train, mlp infer512: the machine was busy")
    assert rounds.judge([kid("torch", 150.0)], 300.0, 0.25) == "machine at 50% of the run's calm speed throughout"
    # readings are in each framework's own matmul (PyTorch's reads 300 here, TensorFlow's 200): each is judged
    # against its own framework's usual level, so both at theirs pair, and a slow spell holding both still does
    rows = []
    for rd, (t, f) in enumerate([(300, 200), (300, 200), (180, 120), (300, 120)]):
        for arm, lv, fw in (("torch", t, "torch"), ("tensorflow", f, "tensorflow")):
            k = kid(arm, float(lv), framework=fw)
            k.round, k.kind = rd, "round"
            rows.append(k)
    assert rounds.paired_rounds(rows, "torch", "tensorflow", 0.25) == [0, 1, 2]  # round 3: 100% against 60%
    assert rounds.reference(rows, (2, "tensorflow")) == pytest.approx(160.0)
    assert rounds.reference(rows, (2, "tensorflow"), last=2) == 120.0
