"""Speed, measured the way a shared machine allows: fresh processes, interleaved in time, calibrated.

A child (one fresh process, one framework) runs the calibration GEMM, measures every model, and runs the GEMM
again. The driver runs `rounds` rounds; in each, every framework (and the A/A control, the first framework a second
time) runs once, in alternating order (ABC, CBA, ...), so slow drift of the machine hits every arm alike. A verdict
rests on the per-round ratios of two arms measured back to back (verdict.speed), never on one process's repeats.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline import calib, timing, verdict
from pipeline.backends import Backend
from pipeline.params import Bench
from pipeline.spec import ModelSpec, Optim, batch_order, init_weights

FORMAT = 2  # records.json format; 2 added measurement times, which comparing experiments needs (exps.py)
CONTROL = "*"  # suffix of the control arm: "torch*" is torch measured again as if it were another framework
# Errors that mean "this machine cannot run the variant" (no C compiler for inductor, no XLA device). Any other
# failure is a bug and fails the stage.
UNAVAILABLE = ("InvalidCxxCompiler", "C compiler", "cc is not found", "No registered 'XlaLaunch'",
               "Could not find compiler", "could not find registered platform")


def arms(frameworks: list[str], control: bool) -> list[str]:
    """The arms of a round: every framework, plus the first one again as the A/A control."""
    return list(frameworks) + ([frameworks[0] + CONTROL] if control else [])


def framework_of(arm: str) -> str:
    return arm.rstrip(CONTROL)


def check_threads(setup: dict, threads: int) -> dict:
    """The thread counts a child really runs with must be the ones asked for (intra-op `threads`, inter-op 1)."""
    got = (setup["intra_op_threads"], setup["inter_op_threads"])
    if got != (threads, 1):
        raise RuntimeError(f"{setup['framework']} runs with {got[0]} intra-op / {got[1]} inter-op threads; "
                           f"asked for {threads} / 1")
    return {"intra_op_threads": got[0], "inter_op_threads": got[1]}


def _prefixed(prefix: str, rates: dict) -> dict:
    return {prefix + k: v for k, v in rates.items()}


def measure(be: Backend, spec: ModelSpec, optim: Optim, data: object, n: int, cfg: Bench, batch_size: int,
            seed: int, variant: str) -> dict:
    """One model, one variant, in this process: training on the train stage's batches (whole training set, its
    batch order and size), inference at each batch size, batch-1 latency. Within-process spreads are diagnostics."""
    model = be.build(spec, init_weights(spec, seed))
    first, per_step = be.train_timings(model, optim, data, batch_order(n, seed, 0), variant, batch_size,
                                       cfg.warmup, cfg.steps, cfg.repeats)
    row = {"variant": variant, "first_step_s": first, **_prefixed("train_", timing.rates(per_step, batch_size))}
    predict = be.make_predict(model, variant)
    for bs in cfg.infer_batch_sizes:
        xb = be.take(data, np.arange(bs) % n)[0]
        per_call = timing.repeat(lambda k, xb=xb: [predict(xb) for _ in range(k)][-1], cfg.warmup, cfg.steps,
                                 cfg.repeats, be.sync)
        row |= _prefixed(f"infer{bs}_", timing.rates(per_call, bs))
    x1 = be.take(data, np.arange(1))[0]
    lat = timing.latencies(lambda: predict(x1), cfg.warmup, cfg.latency_calls, be.sync) * 1e3
    row |= dict(zip(("latency_ms_p50", "latency_ms_p95", "latency_ms_p99"), np.percentile(lat, [50, 95, 99])))
    return row


def measure_or_unsupported(be: Backend, variant: str, run: Callable[[], dict]) -> dict:
    """run() for a non-default variant; a known "not on this machine" failure becomes an unsupported row."""
    try:
        return run() | {"status": "ok"}
    except Exception as e:  # noqa: BLE001  # re-raised below unless it is a known unavailability
        text = f"{type(e).__name__}: {e}"
        if variant == be.DEFAULT or not any(u in text for u in UNAVAILABLE):
            raise
        return {"variant": variant, "status": "unsupported", "reason": text.strip().splitlines()[0][:300]}


def child(be: Backend, specs: dict[str, tuple[ModelSpec, Optim]], data: object, n: int, cfg: Bench,
          batch_size: int, seed: int, threads: int, variants: list[str]) -> list[dict]:
    """What one fresh process does: calibrate, measure each model x variant, calibrate again."""
    before = calib.gemm_gflops(threads)
    rows = [{"model": m, **measure_or_unsupported(be, v, lambda m=m, v=v: measure(
                be, specs[m][0], specs[m][1], data, n, cfg, batch_size, seed, v))}
            for m in specs for v in variants]
    after = calib.gemm_gflops(threads)
    return [r | {"calib_before_gflops": before, "calib_after_gflops": after, "drift": calib.drift(before, after)}
            for r in rows]


def flag(child_rows: list[dict], reference: float, max_drift: float) -> str:
    """Why one child's figures cannot be trusted ("" if they can): the machine changed speed during it, or it ran
    wholly at a speed unlike the run's usual one (`reference`, the median calibration so far)."""
    before, after = child_rows[0]["calib_before_gflops"], child_rows[0]["calib_after_gflops"]
    if calib.drift(before, after) > max_drift:
        return f"machine speed changed {100 * (after / before - 1):+.0f}% during the measurement"
    if min(before, after) < (1 - max_drift) * reference:
        return f"machine at {100 * min(before, after) / reference:.0f}% of the run's usual speed"
    return ""


def run_rounds(run: Callable[[str, int], list[dict]], arm_names: list[str], rounds: int, max_drift: float,
               log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Rounds of run(arm, round_index) in alternating order until every verdict has `rounds` usable rounds (the
    first arm and the other usable in the same round), at most 2 x `rounds`. A flagged child is kept in the records
    (with the reason); its round counts for the pairs it is not part of."""
    rows: list[dict] = []
    calibrations: list[float] = []
    index = 0
    while not _enough(rows, arm_names, rounds) and index < 2 * rounds:
        order = arm_names if index % 2 == 0 else list(reversed(arm_names))
        round_rows = []
        for arm in order:
            got = run(arm, index)
            calibrations += [got[0]["calib_before_gflops"], got[0]["calib_after_gflops"]]
            why = flag(got, float(np.median(calibrations)), max_drift)
            round_rows += [r | {"kind": "round", "round": index, "arm": arm, "flag": why} for r in got]
            if why:
                log(f"round {index + 1}, {arm}: {why}; its figures are left out")
        rows += round_rows
        index += 1
    return rows


def _enough(rows: list[dict], arm_names: list[str], rounds: int) -> bool:
    """Whether every pair a verdict compares (the first arm against each other) has `rounds` usable rounds."""
    ok = {(r["round"], r["arm"]) for r in rows if not r["flag"]}
    first, done = arm_names[0], {rd for rd, _ in ok}
    pairs = [(first, arm) for arm in arm_names[1:]] or [(first, first)]
    return all(sum((rd, a) in ok and (rd, b) in ok for rd in done) >= rounds for a, b in pairs)


def usable(rows: list[dict]) -> list[dict]:
    """The round rows that verdicts and medians use: those of children the drift monitor did not flag. A ratio
    needs both of its children usable in the same round; a third arm flagged in that round does not spoil it (each
    child measured in its own process, at its own time), which matters once a round holds three frameworks and
    the control."""
    return [r for r in rows if r["kind"] == "round" and not r["flag"]]


def rate_key(phase: str, infer_batch_sizes: list[int]) -> str:
    """The record key of a phase's headline rate: training, or inference at the largest batch size."""
    return "train_samples_per_s" if phase == "train" else f"infer{max(infer_batch_sizes)}_samples_per_s"


def ratios(rows: list[dict], arm_a: str, arm_b: str, model: str, key: str) -> list[float]:
    """Per round where both were usable, arm_a's figure over arm_b's, measured back to back in that round."""
    by = {(r["round"], r["arm"]): r[key] for r in usable(rows) if r["model"] == model and r["status"] == "ok"}
    rounds = sorted({rd for rd, _ in by})
    return [by[(rd, arm_a)] / by[(rd, arm_b)] for rd in rounds if (rd, arm_a) in by and (rd, arm_b) in by]


def calibrations(rows: list[dict]) -> list[float]:
    """Every calibration in `rows` at the run's thread count, once per child (thread-sweep children run on other
    counts)."""
    children = {(r["kind"], r["round"], r["arm"]): r for r in rows if r["kind"] != "threads"}
    return [r[k] for r in children.values() for k in ("calib_before_gflops", "calib_after_gflops")]


def comparisons(rows: list[dict], frameworks: list[str], models: list[str], cfg: Bench) -> list[dict]:
    """Every verdict the report prints: framework pairs and the A/A control, per model, train and inference."""
    stab = calib.stability(calibrations(usable(rows)) or [float("nan")] * 2)  # the evidence's machine
    pairs = [(frameworks[0], f, False) for f in frameworks[1:]]
    if cfg.control:
        pairs.append((frameworks[0], frameworks[0] + CONTROL, True))
    out = []
    for model in models:
        for phase in ("train", "infer"):
            key = rate_key(phase, cfg.infer_batch_sizes)
            for a, b, control in pairs:
                per_round = ratios(rows, a, b, model, key)
                said = verdict.speed(framework_of(a), framework_of(b) + (" again" if control else ""),
                                     per_round, cfg.min_effect) | {"ratios": per_round}
                if stab["cv_pct"] > cfg.max_calib_cv:
                    said |= {"winner": None, "text": (
                        f"no verdict: the machine was too unstable (calibration CV {stab['cv_pct']:.1f}% over the "
                        f"usable rounds > {cfg.max_calib_cv:g}%); measured ratio {said['ratio']:.2f}x")}
                out.append({"model": model, "phase": phase, "a": a, "b": b, "control": control, **said})
    # A control that tells identical runs apart shows this run's noise is beyond what the rule separates:
    # no verdict for that model and phase, rather than one that may be chance.
    tripped = {(v["model"], v["phase"]): v for v in out if v["control"] and v["winner"]}
    for v in out:
        c = tripped.get((v["model"], v["phase"]))
        if c and not v["control"]:
            v |= {"winner": None, "text": (f"no verdict: the A/A control told identical runs apart "
                                           f"({c['ratio']:.2f}x), so this run's noise is beyond what the rule can "
                                           f"separate; measured ratio {v['ratio']:.2f}x")}
    return out


def per_cell(rows: list[dict], flops: dict[str, int], run_gflops: float, infer_batch: int) -> list[dict]:
    """Per (framework, model): medians over rounds with their between-process spread, normalised rates."""
    out = []
    clean = usable(rows)
    for fw, model in dict.fromkeys((r["arm"], r["model"]) for r in clean if not r["arm"].endswith(CONTROL)):
        sub = [r for r in clean if r["arm"] == fw and r["model"] == model]
        row: dict = {"framework": fw, "model": model, "rounds": len(sub)}
        for phase, work in (("train", 3), ("infer", 1)):
            key = rate_key(phase, [infer_batch])
            rates = np.array([r[key] for r in sub])
            own = np.array([(r["calib_before_gflops"] + r["calib_after_gflops"]) / 2 for r in sub])
            q1, med, q3 = np.percentile(rates, [25, 50, 75])
            row |= {f"{phase}_samples_per_s": med, f"{phase}_samples_per_s_q1": q1, f"{phase}_samples_per_s_q3": q3,
                    f"{phase}_cv_pct": float(100 * rates.std(ddof=1) / rates.mean()) if len(rates) > 1 else 0.0,
                    # training ~ forward + 2x backward; % of the run's one GEMM figure, and of each child's own
                    f"{phase}_pct_of_peak": 100 * med * work * flops[model] / (run_gflops * 1e9),
                    f"{phase}_pct_of_own_calib": float(np.median(100 * rates * work * flops[model] / (own * 1e9)))}
        row |= {k: float(np.median([r[k] for r in sub])) for k in ("latency_ms_p50", "latency_ms_p95",
                                                                     "latency_ms_p99", "first_step_s")}
        out.append(row)
    return out
