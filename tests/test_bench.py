"""Speed measurement: the decision rule, drift flagging, rounds, thread checks, variants, loud failures."""
import math

import numpy as np
import pytest

from pipeline import backends, params, spec as specs
from pipeline.backends import base
from pipeline.errors import ChildError
from pipeline.measure import bench, child, rounds, verdict, zygote
from pipeline.measure.zygote import Zygotes
from pipeline.records import Measurement, Rates, control_arm, framework_of
from tests.conftest import no_cuda, raw_params

tb = backends.create("torch", 1, "cpu", 0, "fp32")
P = params.parse(raw_params(**{"bench.warmup": 2, "bench.steps": 2, "bench.repeats": 3, "bench.min_repeat_s": 0,
                               "bench.latency_calls": 20, "bench.infer_batch_sizes": [1, 16]}))
SPEC = specs.mlp((8, 8, 1), 10, [16], "relu", 0.0)
OPTIM = specs.Optim("adam", 1e-3, 0.9, 0.9, 0.999, 1e-8)


def finite_positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# --- the decision rule --------------------------------------------------------------------------------------------

def simulate(true_ratio: float, noise: float, rounds: int, trials: int, seed: int) -> list[dict]:
    """Verdicts on simulated runs: per round, each arm's rate = true speed x machine drift x process noise.
    The drift is a slow random walk shared by both arms of a round (they run back to back)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        drift = np.exp(np.cumsum(rng.normal(0, 0.1, rounds)))  # the machine wanders by ~10% per round
        a = true_ratio * drift * np.exp(rng.normal(0, noise, rounds))
        b = drift * np.exp(rng.normal(0, noise, rounds))
        out.append(verdict.speed("A", "B", list(a / b), min_effect=0.05))
    return out


def test_identical_frameworks_are_called_different_at_most_at_the_stated_level():
    for noise in (0.02, 0.1, 0.3):  # from a quiet machine to these shared ones (up to 50% between processes)
        verdicts = simulate(1.0, noise, rounds=6, trials=2000, seed=1)
        false_positive = np.mean([v.winner is not None for v in verdicts])
        assert false_positive <= verdict.ALPHA, (noise, false_positive)
    assert verdicts[0].coverage == pytest.approx(1 - 2 / 2**6)  # the exact interval of 6 rounds: 96.9%


def test_a_real_20_percent_difference_is_found_and_never_reversed():
    verdicts = simulate(1.2, 0.05, rounds=6, trials=1000, seed=2)
    winners = [v.winner for v in verdicts]
    assert np.mean([w == "A" for w in winners]) >= 0.9
    assert "B" not in winners
    slower = simulate(1 / 1.2, 0.05, rounds=8, trials=300, seed=3)
    assert np.mean([v.winner == "B" for v in slower]) >= 0.9


def test_a_difference_below_the_minimum_effect_is_not_called():
    v = verdict.speed("A", "B", [1.03, 1.02, 1.04, 1.03, 1.02, 1.03], min_effect=0.05)
    assert v.ci_low > 1 and v.winner is None and v.text.startswith("no clear difference")


def test_too_few_rounds_give_no_verdict():
    v = verdict.speed("A", "B", [2.0] * 5, min_effect=0.05)
    assert v.winner is None and "at least 6 are needed" in v.text


# --- time to target from one seed: steps x the per-step verdict -----------------------------------------------------

A_FASTER = verdict.speed("A", "B", [1.05, 1.1, 1.12, 1.15, 1.2, 1.1], 0.05)  # A 1.11x per step, CI 1.05-1.20


@pytest.mark.parametrize("window_a, window_b, starts", [
    ((900, 1000), (900, 1000), "A reaches the target faster: 1,000 vs 1,000 steps to target, the same to within one "
                               "evaluation (100 steps), and per step A is faster (A/B = 1.11x"),
    # one evaluation apart in A's favour: time A/B in [900/1000/1.20, 1000/1000/1.05] = [0.75, 0.95]: still A
    ((900, 1000), (1000, 1100), "A reaches the target faster: 1,000 vs 1,100 steps"),
    # one evaluation apart against A: [1000/1000/1.20, 1100/900/1.05] = [0.83, 1.16] spans 1: no call
    ((1000, 1100), (900, 1000), "no clear difference: 1,100 vs 1,000 steps to target, the same to within one "
                                "evaluation (100 steps), and per step A is faster"),
    ((900, 1000), (1100, 1200), "no verdict: from one seed, 1,000 vs 1,200 steps to target, more than one "
                                "evaluation (100 steps) apart"),
    (None, (900, 1000), "no verdict: A did not reach the target"),
])
def test_one_seeds_time_to_target_verdict_counts_the_steps_resolution(window_a, window_b, starts):
    v = verdict.time_to_target("A", "B", window_a, window_b, A_FASTER)
    assert v.text.startswith(starts), v.text
    assert (v.winner == "A") == starts.startswith("A reaches")
    if window_a == (1000, 1100):
        assert (v.time_ratio_low, v.time_ratio_high) == pytest.approx((1000 / 1000 / 1.2, 1100 / 900 / 1.05))
        assert v.text.endswith("spans 1 once the steps' resolution is counted")


def readings(true: np.ndarray, n_val: int, rng: np.random.Generator, shared: float = 0.7) -> np.ndarray:
    """Validation accuracy read on n_val images: a model's own errors, a share of them those of its twin (two
    frameworks training the same maths err mostly on the same images)."""
    return true + rng.normal(0, np.sqrt(true * (1 - true) / n_val) * np.sqrt(1 - shared), len(true))


STEPS = np.arange(100, 2300, 100)
PLATEAU = 0.99 - 0.03 * np.exp(-STEPS / 300)  # a CNN's validation curve flattening just under its target


@pytest.mark.parametrize("seed", range(5))
def test_curves_of_the_same_maths_agree_though_their_crossings_of_a_flat_target_differ(seed):
    rng = np.random.default_rng(seed)
    a, b = readings(PLATEAU, 6000, rng), readings(PLATEAU, 6000, rng)
    agreed = verdict.curves_agree(list(a), list(b), 6000)
    assert agreed.agree, agreed.text
    assert agreed.max_gap_se <= agreed.bound_se and agreed.p_signed_rank >= 0.05 and agreed.evaluations == len(STEPS)
    # Far-apart crossings (1,300 vs 2,200 steps): the per-step verdict carries the time one, as at equal steps.
    v = verdict.time_to_target("A", "B", (1200, 1300), (2100, 2200), A_FASTER, agreed)
    assert v.winner == "A" and v.how == "curves x bench", v.text
    assert v.text.startswith("A reaches the target faster: 1,300 vs 2,200 steps to target, a crossing of flat "
                             "curves: the validation curves agree: largest gap ")
    assert (v.time_ratio_low, v.time_ratio_high) == pytest.approx((1 / A_FASTER.ci_high, 1 / A_FASTER.ci_low))


@pytest.mark.parametrize("seed", range(5))
def test_a_framework_that_learns_slower_per_step_or_glitches_is_told_apart(seed):
    rng = np.random.default_rng(seed)
    a = readings(PLATEAU, 6000, rng)
    lagging = readings(0.99 - 0.03 * np.exp(-(STEPS - 150) / 300), 6000, rng)  # 150 steps behind all along
    slow = verdict.curves_agree(list(a), list(lagging), 6000)
    assert not slow.agree, slow.text
    below = readings(PLATEAU - 0.0015, 6000, rng)  # 9 images fewer right at every evaluation: no gap alone tells
    low = verdict.curves_agree(list(a), list(below), 6000)
    assert not low.agree and low.max_gap_se <= low.bound_se and low.p_signed_rank < 0.05, low.text
    glitch = readings(PLATEAU, 6000, rng)
    glitch[5] -= 0.02  # one evaluation 120 images off: more than the validation noise allows
    odd = verdict.curves_agree(list(a), list(glitch), 6000)
    assert not odd.agree and odd.max_gap_se > odd.bound_se, odd.text
    v = verdict.time_to_target("A", "B", (1200, 1300), (2100, 2200), A_FASTER, slow)
    assert v.winner is None and v.text.startswith("no verdict: from one seed, 1,300 vs 2,200 steps to target, more "
                                                  "than one evaluation (100 steps) apart") and "differ beyond" in v.text


def test_too_few_evaluations_in_common_are_no_agreement():
    got = verdict.curves_agree([0.9, 0.95], [0.9, 0.95], 6000)
    assert not got.agree and got.text.startswith("2 evaluation(s) in common")
    assert verdict.curves_agree([0.9, 0.95, 0.97], [0.9, 0.95, 0.97], 6000).agree  # identical curves: p = 1


def test_one_seeds_time_to_target_has_no_verdict_when_the_per_step_one_was_withheld():
    withheld = A_FASTER.withheld("the A/A control told identical runs apart (1.3x)")
    v = verdict.time_to_target("A", "B", (900, 1000), (900, 1000), withheld)
    assert v.winner is None and v.text.startswith("no verdict: 1,000 vs 1,000 steps to target, the same to "
                                                        "within one evaluation (100 steps), but per step no verdict")


# --- rounds and the drift monitor ---------------------------------------------------------------------------------

FAKE = P.bench.model_copy(update={"infer_batch_sizes": [512], "max_drift": 0.1})  # what fake_child reports


def fake_child(series: dict):
    """run(arm, round) for run_rounds: rates and calibrations scripted per (round, arm)."""
    calls = []

    def run(arm, rd, calm=0.0):
        calls.append((rd, arm))
        before, after, rate = series.get((rd, arm), (200.0, 200.0, 100.0 if arm.startswith("torch") else 80.0))
        rates = Rates(rate, rate, rate, 0.0, 0.0, 1, 1.0)
        return [Measurement("mlp", "eager", train=rates, infer={512: rates}, calib_before_gflops=before,
                            calib_after_gflops=after)]
    return run, calls


def test_rounds_alternate_order_and_flagged_rounds_are_measured_again():
    series = {(1, "tensorflow"): (200.0, 110.0, 10.0),   # slowed down mid-measurement
              (3, "torch*"): (105.0, 104.0, 30.0)}      # stable, but the whole child at half the usual speed
    run, calls = fake_child(series)
    logged = []
    rows = rounds.run_rounds(run, ["torch", "tensorflow", "torch*"], rounds=6, max_drift=0.1, log=logged.append)
    assert calls[:6] == [(0, "torch"), (0, "tensorflow"), (0, "torch*"), (1, "torch*"), (1, "tensorflow"),
                         (1, "torch")]
    # both pairs (torch/tensorflow, torch/torch*) have 6 usable rounds after 7: one round measured again, not two
    assert sorted({r.round for r in rows}) == list(range(7))
    flags = {(r.round, r.arm): r.flag for r in rows if r.flag}
    assert flags == {(1, "tensorflow"): "machine speed changed -45% during the measurement",
                     (3, "torch*"): "machine at 52% of the run's usual speed"}
    assert len(logged) == 2 and "its figures are left out" in logged[0]
    r = rounds.ratios(rows, "torch", "tensorflow", "mlp", "train", 0.1)
    # the flagged children's outliers (10 and 30 samples/s) are left out; round 4's flagged control does not
    # spoil that round's torch/tensorflow pair
    assert r == [1.25] * 6 and rounds.ratios(rows, "torch", "torch*", "mlp", "train", 0.1) == [1.0] * 6


def test_rounds_beyond_the_first_run_only_the_arms_still_short_of_usable_rounds():
    # the A/A control flagged twice, the frameworks never: only torch and its control need more rounds
    run, calls = fake_child({(rd, "torch*"): (200.0, 100.0, 1.0) for rd in (1, 2)})
    timed, clock = ticking(run, 10.0)
    rows = rounds.run_rounds(timed, ["torch", "tensorflow", "torch*"], rounds=6, max_drift=0.1, max_s=220,
                             clock=clock)
    assert len(calls) == 18 + 4 and clock() == 220  # six whole rounds (180 s), then two of 20 s each
    # the two extra rounds keep the alternating order, without TensorFlow: 20 s rounds fit the 220 s budget
    # twice where whole ones (30 s) would fit once, and the control gets its six usable rounds
    assert calls[18:] == [(6, "torch"), (6, "torch*"), (7, "torch*"), (7, "torch")]
    assert rounds.ratios(rows, "torch", "torch*", "mlp", "train", 0.1) == [1.0] * 6
    assert rounds.ratios(rows, "torch", "tensorflow", "mlp", "train", 0.1) == [1.25] * 6  # its six, untouched
    verdicts = bench.comparisons(rows, ["torch", "tensorflow"], ["mlp"], FAKE)
    assert all(math.isfinite(v.ci_low) for v in verdicts)


def test_a_slow_spell_that_holds_both_children_alike_still_gives_their_ratio():
    # the machine often sits at ~70% for minutes: both children of a round flagged for it met the same machine, so
    # their ratio stands (their own rates stay out of the medians); a pair at different speeds (flagged or not),
    # or a child whose machine changed speed during it, gives none
    series = {(2, "torch"): (120.0, 120.0, 60.0), (2, "tensorflow"): (120.0, 121.0, 48.0),  # both at 60%: paired
              (3, "torch"): (120.0, 120.0, 60.0),                               # 60% against 100%: not paired
              (4, "tensorflow"): (200.0, 150.0, 80.0),                          # changed speed: never paired
              (5, "torch"): (240.0, 240.0, 100.0), (5, "tensorflow"): (185.0, 185.0, 80.0)}  # unflagged, 1.3x apart
    rows = rounds.run_rounds(fake_child(series)[0], ["torch", "tensorflow"], rounds=6, max_drift=0.1)
    assert {(r.round, r.arm) for r in rows if r.flag} == {(2, "torch"), (2, "tensorflow"), (3, "torch"),
                                                          (4, "tensorflow")}
    assert rounds.paired_rounds(rows, "torch", "tensorflow", 0.1) == [0, 1, 2, 6, 7, 8]  # six after 9 rounds
    assert len({r.round for r in rows}) == 9
    assert rounds.ratios(rows, "torch", "tensorflow", "mlp", "train", 0.1) == [1.25] * 6
    (t,) = [c for c in bench.per_cell(rows, {"mlp": 1000}, 200.0) if c.framework == "torch"]
    assert t.train.samples_per_s == 100.0  # the slow spell's 60 samples/s is not PyTorch's rate


def ticking(run, seconds_per_child: float):
    """run() that advances a fake clock by `seconds_per_child` per child, and that clock."""
    now = [0.0]

    def timed(arm, rd, calm=0.0):
        now[0] += seconds_per_child
        return run(arm, rd)
    return timed, lambda: now[0]


def test_rounds_stop_when_their_time_budget_is_spent_and_say_so():
    run, calls = fake_child({(rd, "b"): (200.0, 100.0, 1.0) for rd in range(100)})  # the machine never settles
    logged = []
    timed, clock = ticking(run, 10.0)  # a round of two children: 20 s
    rows = rounds.run_rounds(timed, ["a", "b"], rounds=6, max_drift=0.1, log=logged.append, max_s=150, clock=clock)
    # the first 6 rounds always run (120 s); a 7th would end at 140 s <= 150, an 8th at 160 s > 150
    assert len(calls) == 2 * 7 and clock() == 140 and {r.arm for r in rounds.usable(rows)} == {"a"}
    assert logged[-1].startswith("bench.max_s (150 s) spent after 7 rounds before every comparison had 6 usable")
    short = ticking(fake_child({})[0], 100.0)  # clean but slow: the budget never cuts the first rounds
    assert len({r.round for r in rounds.run_rounds(short[0], ["a", "b"], 6, 0.1, max_s=1, clock=short[1])}) == 6
    verdicts = bench.comparisons(rows, ["a", "b"], ["mlp"], FAKE.model_copy(update={"control": False}))
    assert all(v.winner is None and "no verdict" in v.text for v in verdicts)


def test_an_unstable_machine_gets_no_verdict_and_says_why():
    series = {(rd, arm): (200.0 + 150 * (rd % 2), 200.0 + 150 * (rd % 2), 100.0 if arm == "a" else 50.0)
              for rd in range(12) for arm in ("a", "b")}  # calibration alternates 200 / 350: CV ~ 30%
    rows = rounds.run_rounds(fake_child(series)[0], ["a", "b"], rounds=6, max_drift=0.9)
    v = bench.comparisons(rows, ["a", "b"], ["mlp"], FAKE.model_copy(update={"control": False}))[0]
    assert v.ratio == 2.0 and v.winner is None
    assert v.text.startswith("no verdict: the machine's calm speed was too unsteady (CV ")
    assert "over the usable rounds > 25%); measured ratio 2.00x" in v.text
    # with too few usable rounds for any interval, that is the reason given (it was "measured ratio nanx")
    series |= {(rd, "b"): (200.0, 400.0, 50.0) for rd in range(12)}  # every b child drifted: none usable
    rows = rounds.run_rounds(fake_child(series)[0], ["a", "b"], rounds=6, max_drift=0.9, max_s=0)
    v = bench.comparisons(rows, ["a", "b"], ["mlp"], FAKE.model_copy(update={"control": False}))[0]
    assert v.text == "no verdict: 0 usable rounds; at least 6 are needed for a 95% interval"


def test_control_arm_is_the_first_framework_again():
    assert rounds.arms(["torch", "tensorflow"], True) == ["torch", "tensorflow", "torch*"]
    assert framework_of("torch*") == "torch" and control_arm("torch") == "torch*"
    run, _ = fake_child({})
    rows = rounds.run_rounds(run, ["torch", "tensorflow", "torch*"], rounds=6, max_drift=0.1)
    verdicts = bench.comparisons(rows, ["torch", "tensorflow"], ["mlp"], FAKE)
    control = [v for v in verdicts if v.control]
    assert [(v.a, v.b, v.phase) for v in control] == [("torch", "torch*", "train"),
                                                                ("torch", "torch*", "infer")]
    assert [v.ratio for v in verdicts] == [100 / 80, 1.0, 100 / 80, 1.0]
    assert control[0].text.startswith("no clear difference (PyTorch/PyTorch again = 1.00x")
    assert verdicts[0].text.startswith("PyTorch is faster (PyTorch/TensorFlow = 1.25x")


# --- one child's measurements -------------------------------------------------------------------------------------

def test_child_rows_are_complete_and_calibrated():
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    rows = child.child(tb, {"mlp": (SPEC, OPTIM)}, tb.put(x, np.arange(40) % 10), 40, P.bench, 8, 0, 1, ["eager"])
    (m,) = rows
    r = m.flat()  # the row records.json holds
    for key in ("train_samples_per_s", "train_step_time_ms_median", "infer16_samples_per_s", "infer1_samples_per_s",
                "first_step_s", "calib_before_gflops", "calib_after_gflops"):
        assert finite_positive(r[key]), key
    assert r["train_samples_per_s_q1"] <= r["train_samples_per_s"] <= r["train_samples_per_s_q3"]
    assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"] <= r["latency_ms_p99"]
    assert r["drift"] == pytest.approx(abs(r["calib_after_gflops"] / r["calib_before_gflops"] - 1))
    assert Measurement.from_flat(r) == m and m.rate("infer") == r["infer16_samples_per_s"]  # read back whole


def test_a_record_read_back_from_records_json_keeps_its_unset_figures_nan(tmp_path):
    # JSON has no NaN (files.write_json writes null): a reader must get NaN back, not None, or math on it fails
    import json
    from dataclasses import fields

    from pipeline import files
    m = Measurement("mlp", "eager", first_step_s=0.1)  # on a CPU its GPU, host and timing figures stay unset
    files.write_json(tmp_path / "records.json", {"records": [m.flat()]})
    back = Measurement.from_flat(json.loads((tmp_path / "records.json").read_text())["records"][0])
    unset = [f.name for f in fields(Measurement) if isinstance(f.default, float) and math.isnan(f.default)
             and f.name != "first_step_s"]
    assert "host_calib_before_gflops" in unset and all(math.isnan(getattr(back, k)) for k in unset)
    assert back.first_step_s == 0.1


def test_on_a_gpu_drift_follows_the_device_matmul_and_the_host_gemm_is_read_beside_it(monkeypatch):
    from pipeline.probe import speedo, telemetry
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    data, run = tb.put(x, np.arange(40) % 10), lambda: child.child(tb, {"mlp": (SPEC, OPTIM)}, data, 40, P.bench,
                                                                    8, 0, 1, ["eager"])[0]
    host, asked = iter([150.0, 120.0, 140.0, 140.0]), []
    monkeypatch.setattr(speedo, "gemm_gflops", lambda threads, seconds=0.3: asked.append(seconds) or next(host))
    cpu = run()  # on a CPU the host's GEMM is the speedometer itself, read once on each side
    assert (cpu.calib_before_gflops, cpu.calib_after_gflops, asked) == (150.0, 120.0, [P.bench.calib_s] * 2)
    assert math.isnan(cpu.host_calib_before_gflops) and math.isnan(cpu.gpu_sm_clock_mhz_after)
    device, asked[:] = iter([1000.0, 900.0]), []  # a fake GPU: its own matmul, NVML figures
    monkeypatch.setattr(tb, "speedometer", lambda: "fake matmul on a fake GPU")
    monkeypatch.setattr(tb, "calibrate", lambda threads, seconds: next(device))
    monkeypatch.setattr(telemetry, "read", lambda: {"sm_clock_mhz": 1980.0, "temperature_c": 50.0, "power_w": 300.0,
                                                    "memory_used_mb": 1000.0, "processes": 2.0})
    gpu = run()
    assert (gpu.calib_before_gflops, gpu.calib_after_gflops, gpu.drift) == (1000.0, 900.0, pytest.approx(0.1))
    assert (gpu.host_calib_before_gflops, gpu.host_calib_after_gflops) == (140.0, 140.0)
    assert asked == [speedo.HOST_SECONDS] * 2 and gpu.speedometer == "fake matmul on a fake GPU"
    assert gpu.gpu_sm_clock_mhz_after == 1980.0
    assert gpu.gpu_processes_after == 2.0 and Measurement.from_flat(gpu.flat()).gpu_processes_after == 2.0


@no_cuda
def test_variants_a_framework_or_model_lacks_become_rows_saying_why():
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    asked = ["cuda_graphs", "channels_last", "fit"]
    rows = child.child(tb, {"mlp": (SPEC, OPTIM)}, tb.put(x, np.arange(40) % 10), 40, P.bench, 8, 0, 1,
                       tb.variants(asked), asked)
    got = {m.variant: m for m in rows}
    assert list(got) == ["eager", "channels_last", "cuda_graphs", "fit"]  # the backend's order, then the absent
    assert got["eager"].status == "ok" and finite_positive(got["eager"].rate("train"))
    assert got["cuda_graphs"].status == "unsupported" and "need a CUDA device" in got["cuda_graphs"].reason
    assert (got["channels_last"].status, got["channels_last"].reason) == ("absent", child.NO_CONV)  # an MLP
    assert (got["fit"].status, got["fit"].reason) == ("absent", tb.ABSENT["fit"])
    assert math.isnan(got["eager"].train_mem_peak_mb)  # no device allocator on a CPU: no invented figure
    for m in rows:  # every row, measured or not, reads back from records.json whole
        assert Measurement.from_flat(m.flat()).status == m.status


def test_timed_steps_hold_no_gather_or_copy_only_the_step(monkeypatch):
    """Data stays on the device: the epoch's batches are gathered once before the first step, never in a timed
    one, even when the timed steps run past the end of the epoch (5 batches here, 10 steps)."""
    events, take, make_step = [], tb.take, tb.make_step
    monkeypatch.setattr(tb, "take", lambda data, idx: events.append("take") or take(data, idx))

    def watched(model, optim, variant):
        step = make_step(model, optim, variant)
        return base.Step(lambda x, y: events.append("step") or step(x, y), step.optimizer, step.set_lr)
    monkeypatch.setattr(tb, "make_step", watched)
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    data = tb.put(x, np.arange(40) % 10)
    first, per_step = tb.train_timings(tb.build(SPEC, specs.init_weights(SPEC, 0)), OPTIM, data,
                                       specs.batch_order(40, 0, 0), "eager", 8, warmup=2, steps=4, repeats=2)
    assert events == ["take"] + ["step"] * (1 + 1 + 4 * 2) and len(per_step) == 2


def test_thread_counts_are_checked_not_hoped_for():
    assert base.check_threads({"framework": "torch", "intra_op_threads": 2, "inter_op_threads": 1}, 2) == {
        "intra_op_threads": 2, "inter_op_threads": 1}
    with pytest.raises(RuntimeError, match="torch runs with 4 intra-op / 1 inter-op threads; asked for 2 / 1"):
        base.check_threads({"framework": "torch", "intra_op_threads": 4, "inter_op_threads": 1}, 2)


def test_known_unavailable_variant_is_a_row_but_any_other_failure_is_loud():
    def no_compiler():
        raise RuntimeError("InvalidCxxCompiler: No working C compiler found in torch._inductor\nmore")

    def bug():
        raise ValueError("shape mismatch")
    row = child.measure_or_unsupported(tb, "mlp", "compile", no_compiler)
    assert (row.model, row.variant, row.status, row.reason) == (
        "mlp", "compile", "unsupported", "RuntimeError: InvalidCxxCompiler: No working C compiler found in "
        "torch._inductor")
    assert "train_samples_per_s" not in row.flat() and "first_step_s" not in row.flat()
    with pytest.raises(ValueError):
        child.measure_or_unsupported(tb, "mlp", "compile", bug)
    with pytest.raises(RuntimeError):  # the default variant never becomes "unsupported"
        child.measure_or_unsupported(tb, "mlp", "eager", no_compiler)


def test_a_failing_child_fails_the_stage_in_one_line(tmp_path, capsys):
    from pipeline import files

    with pytest.raises(SystemExit) as e:
        with Zygotes(fork=True, gpu_visible=False) as via:
            files.run(lambda argv: zygote.spawn(via, tmp_path / "missing.npz", tmp_path / "params.yaml", "torch",
                                               "round", 1, "round 1 torch"))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: bench child round 1 torch failed (exit 2); its error is printed above"
    assert ChildError.__name__ == "ChildError"


def test_a_tripped_control_withholds_the_verdict_it_would_have_given():
    # torch* is 20% slower than torch in every round: the control trips, and torch vs tensorflow (a real 25%)
    # gets no verdict for that model and phase
    run, _ = fake_child({(rd, "torch*"): (200.0, 200.0, 80.0) for rd in range(6)})
    rows = rounds.run_rounds(run, ["torch", "tensorflow", "torch*"], rounds=6, max_drift=0.1)
    verdicts = bench.comparisons(rows, ["torch", "tensorflow"], ["mlp"], FAKE)
    train = {v.control: v for v in verdicts if v.phase == "train"}
    assert train[True].winner == "PyTorch" and train[True].text.startswith("PyTorch is faster")
    assert train[False].winner is None
    assert train[False].text == ("no verdict: the A/A control told identical runs apart (1.25x), so this run's "
                                    "noise is beyond what the rule can separate; measured ratio 1.25x")


# --- bench.vary: another value of one step setting as extra arms of the same rounds ------------------------------

def test_a_varied_setting_runs_as_extra_arms_paired_with_its_own_framework():
    arms = rounds.arms(["torch", "tensorflow"], True, "train.batch_size", [64, 128, 256], own=128)
    assert arms == ["torch", "tensorflow", "torch*", "torch@train.batch_size=64", "torch@train.batch_size=256",
                    "tensorflow@train.batch_size=64", "tensorflow@train.batch_size=256"]
    assert rounds.pairs(arms) == [("torch", "tensorflow"), ("torch", "torch*"),
                                  ("torch@train.batch_size=64", "torch"), ("torch@train.batch_size=256", "torch"),
                                  ("tensorflow@train.batch_size=64", "tensorflow"),
                                  ("tensorflow@train.batch_size=256", "tensorflow")]
    assert framework_of("tensorflow@train.batch_size=64") == "tensorflow"
    speed = {"torch": 100.0, "tensorflow": 80.0, "torch*": 100.0}  # batch 256: 1.5x the own arm's rate
    series = {(rd, arm): (200.0, 200.0, speed.get(arm, 150.0 if arm.endswith("256") else speed[arm.split("@")[0]]))
              for rd in range(6) for arm in arms if not arm.endswith("=64")}
    run, calls = fake_child(series)
    small = [a for a in arms if not a.endswith("=64")]
    rows = rounds.run_rounds(run, small, rounds=6, max_drift=0.1)
    assert len(calls) == 6 * len(small)  # every arm in every round: the setting arms are interleaved, not after
    v = {(x.a, x.b, x.phase): x for x in bench.comparisons(rows, ["torch", "tensorflow"], ["mlp"], FAKE,
                                                                    {"train.batch_size": 128})}
    big = v[("torch@train.batch_size=256", "torch", "train")]
    assert big.ratio == pytest.approx(1.5) and big.setting == "torch@train.batch_size=256"
    assert big.text.startswith("PyTorch at train.batch_size=256 is faster (PyTorch at train.batch_size=256/"
                                  "PyTorch at train.batch_size=128 = 1.50x")
    assert v[("torch", "tensorflow", "train")].winner == "PyTorch"  # the framework verdicts are unchanged
    assert {c.framework for c in bench.per_cell(rows, {"mlp": 1000}, 200.0)} == {"torch", "tensorflow"}


def test_thread_arms_are_judged_against_their_own_thread_counts_calibration():
    # at 1 thread the calibration GEMM reads about half of 2 threads': against the run's 2-thread median a steady
    # 1-thread child looked like a machine at half speed (flagged), and the mixed readings like an unstable machine
    arms = rounds.arms(["torch", "tensorflow"], False, "threads", [1], own=2)
    assert arms == ["torch", "tensorflow", "torch@threads=1", "tensorflow@threads=1"]

    def run(arm, rd, calm=0.0):
        one = arm.endswith("=1")
        gemm, rate = (100.0, 60.0) if one else (200.0, 100.0 if arm == "torch" else 80.0)
        rates = Rates(rate, rate, rate, 0.0, 0.0, 1, 1.0)
        return [Measurement("mlp", "eager", train=rates, infer={512: rates}, calib_before_gflops=gemm,
                            calib_after_gflops=gemm * (1.02 if rd == 2 and one else 1.0), threads=1 if one else 2)]
    rows = rounds.run_rounds(run, arms, rounds=6, max_drift=0.1)
    assert not [r for r in rows if r.flag] and len({r.round for r in rows}) == 6
    assert rounds.calibrations(rows) == [200.0] * 24  # the machine's stability: the run's own count only
    v = {(x.a, x.phase): x for x in bench.comparisons(rows, ["torch", "tensorflow"], ["mlp"],
                                                            FAKE.model_copy(update={"control": False}),
                                                            {"threads": 2})}
    assert v[("torch@threads=1", "train")].text.startswith(
        "PyTorch at threads=2 is faster (PyTorch at threads=1/PyTorch at threads=2 = 0.60x")
    assert v[("tensorflow@threads=1", "infer")].ratio == pytest.approx(0.75)
    assert v[("torch", "train")].winner == "PyTorch"


def test_a_setting_arm_spawns_its_child_with_that_setting(monkeypatch):
    from pipeline.measure import zygote
    seen = []

    def fake_fresh(cmd):
        seen.append(cmd)
        return 1, "", "boom"
    monkeypatch.setattr(zygote, "_fresh", fake_fresh)
    with pytest.raises(ChildError):
        zygote.spawn(Zygotes(fork=False, gpu_visible=False), "d.npz", "p.yaml", "torch", "round", 2,
                    "round 1 torch@train.batch_size=256", 256)
    argv = seen[0]
    assert argv[argv.index("--batch-size") + 1] == "256" and argv.count("--batch-size") == 1


def test_a_variant_whose_steps_differ_from_the_default_is_caught_before_it_is_timed(monkeypatch):
    from pipeline.backends.base import Variant
    cfg = params.parse(raw_params(**{"bench.steps": 2, "bench.repeats": 3, "bench.warmup": 1, "bench.min_repeat_s": 0,
                                     "bench.latency_calls": 20, "bench.infer_batch_sizes": [4]})).bench
    real = tb.make_step

    def make_step(model, optim, variant):  # "fast": a wrong update (10x the rate); "twin": the default's maths
        if variant == "fast":
            return real(model, specs.Optim(optim.name, optim.lr * 10, optim.momentum, optim.beta1, optim.beta2,
                                           optim.eps), "eager")
        return real(model, optim, "eager")
    monkeypatch.setattr(tb, "make_step", make_step)
    monkeypatch.setattr(tb, "make_predict", lambda model, variant: type(tb).make_predict(tb, model, "eager"))
    monkeypatch.setattr(type(tb), "VARIANTS", tb.VARIANTS | {"fast": Variant("wrong on purpose"),
                                                             "twin": Variant("the default again")})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64)
    spec = specs.mlp((8, 8, 1), 10, [16], "relu", 0.5)  # dropout on: left out of the check only
    data = tb.put(x, y)
    wrong = child.measure(tb, spec, OPTIM, data, 64, cfg, 16, 0, "fast")
    assert wrong.status == "wrong" and wrong.reason.startswith("step 2's loss ") and "not timed" in wrong.reason
    assert "differs from the default variant's" in wrong.reason and wrong.flat()["reason"] == wrong.reason
    assert child.measure(tb, spec, OPTIM, data, 64, cfg, 16, 0, "twin").status == "ok"


def test_each_model_s_inference_units_run_that_model(monkeypatch):
    # two models in one child: each unit must time its own model's predict, not the last one built
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    wide = specs.mlp((8, 8, 1), 10, [32], "relu", 0.0)
    called, make = [], tb.make_predict

    def tagged(model, variant):
        predict, width = make(model, variant), model[1].out_features  # the first dense layer's width
        return lambda xb: called.append(width) or predict(xb)
    monkeypatch.setattr(tb, "make_predict", tagged)
    rows, _ = child.interleaved(tb, {"mlp": (SPEC, OPTIM), "wide": (wide, OPTIM)}, tb.put(x, np.arange(40) % 10),
                                40, P.bench, 8, 0, 1, 0.0)
    assert [r.model for r in rows] == ["mlp", "wide"] and set(called) == {16, 32}
    # runs of calls to one model: its sizing, then one per repeat as the units take turns, then its latency; with
    # the last model's predict in every unit, the first model would be called only to size it and for latency
    runs = [w for i, w in enumerate(called) if i == 0 or called[i - 1] != w]
    assert runs.count(16) >= P.bench.repeats + 2 and runs.count(32) >= P.bench.repeats + 2, runs
