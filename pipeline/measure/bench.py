"""The bench: rounds, variants and thread children; per-cell figures and gated verdicts.

The bench: interleaved rounds of fresh children (rounds.py, child.py), then one variants child and the
thread-count children per framework; the per-cell figures, and the verdicts with their gates.

Gates, in order: a comparison needs its usable rounds (verdict.speed); the machine's calibration CV over the usable
rounds must stay within bench.max_calib_cv; and the A/A control (the first framework against itself) must read
"no clear difference", or that model and phase gets no framework verdict.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline import params
from pipeline.backends import shown
from pipeline.measure import rounds, verdict, zygote
from pipeline.measure.verdict import Verdict
from pipeline.probe import speedo, telemetry
from pipeline.probe.stats import spread
from pipeline.measure.zygote import Zygotes
from pipeline.params import Bench, Params
from pipeline.records import (FORMAT, PHASES, BenchCell, Measurement, PhaseSummary, framework_of, gpus,
                              is_control, setting_of)

log = logging.getLogger("bench")


def comparisons(rows: list[Measurement], frameworks: list[str], models: list[str], cfg: Bench,
                own: dict[str, int] | None = None) -> list[Verdict]:
    """Every verdict the report prints, per model, train and inference: each pair of frameworks, the A/A control,
    and each setting arm against its framework at the params' own value (`own`: that value per bench.vary key)."""
    # how steady the machine's calm speed was from child to child (each child's calm level over its framework's usual
    # one, in %): what the ratios rest on, whatever load came and went around the calm repeats
    stab = speedo.stability([100 * v for v in rounds.calm_levels(rows)] or [float("nan")] * 2)
    settings = list(dict.fromkeys(r.arm for r in rows if r.kind == "round" and setting_of(r.arm)))
    out = []
    for model in models:
        for phase in PHASES:
            for a, b in rounds.pairs(rounds.arms(frameworks, cfg.control) + settings):
                control, setting = is_control(b), setting_of(a)
                per_round = rounds.ratios(rows, a, b, model, phase, cfg.max_drift)
                # the report's names (PyTorch, not torch): the verdict's text and winner are read as written
                name_a, name_b = shown(framework_of(a)), shown(framework_of(b)) + (" again" if control else "")
                if setting:
                    key, value = setting
                    name_a, name_b = f"{name_a} at {key}={value}", f"{name_b} at {key}={(own or {}).get(key, 'own')}"
                said = verdict.speed(name_a, name_b, per_round, cfg.min_effect)
                if stab.cv_pct > cfg.max_calib_cv and said.rounds >= verdict.min_rounds():  # else: too few, said
                    said = said.withheld(f"the machine's calm speed was too unsteady (CV {stab.cv_pct:.1f}% over "
                                         f"the usable rounds > {cfg.max_calib_cv:g}%); measured ratio "
                                         f"{said.ratio:.2f}x")
                out.append(Verdict(**asdict(said), model=model, phase=phase, a=a, b=b, control=control,
                                   setting=a if setting else None, ratios=per_round))
    # A control that tells identical runs apart shows this run's noise is beyond what the rule separates:
    # no verdict for that model and phase, rather than one that may be chance.
    tripped = {(v.model, v.phase): v for v in out if v.control and v.winner}
    return [v.withheld(f"the A/A control told identical runs apart ({c.ratio:.2f}x), so this run's noise is beyond "
                       f"what the rule can separate; measured ratio {v.ratio:.2f}x")
            if (c := tripped.get((v.model, v.phase))) and not v.control and v.rounds >= verdict.min_rounds()
            else v for v in out]  # with too few rounds that is the reason, said already


def per_cell(rows: list[Measurement], flops: dict[str, int], run_gflops: float) -> list[BenchCell]:
    """Per (framework, model): medians over rounds with their between-process spread, normalised rates."""
    out = []
    clean = rounds.usable(rows)
    plain = [r for r in clean if not is_control(r.arm) and not setting_of(r.arm)]  # setting arms: own section
    for fw, model in dict.fromkeys((r.arm, r.model) for r in plain):
        sub = [r for r in clean if r.arm == fw and r.model == model]
        own = np.array([r.own_calib_gflops() for r in sub])
        phases = {}
        for phase in PHASES:
            rates = np.array([r.rate(phase) for r in sub])
            s = spread(rates)
            phases[phase] = PhaseSummary(
                s.median, s.q1, s.q3, s.cv_pct, speedo.share_pct(s.median, phase, flops[model], run_gflops),
                float(np.median(speedo.share_pct(rates, phase, flops[model], own))))
        med = {k: float(np.median([getattr(r, k) for r in sub]))
               for k in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "first_step_s")}
        out.append(BenchCell(fw, model, len(sub), **phases, **med))
    return out


def _metric_name(v: Verdict) -> str:
    """A verdict's key in metrics.json: the pair, control, or the setting arm (dots and '@' would nest in DVC)."""
    if v.setting:
        return v.setting.replace("@", "_").replace(".", "_").replace("=", "_")
    return "control" if v.control else f"{v.a}_vs_{v.b}"


def variants_asked(cfg: Bench) -> bool:
    """Whether the params ask for any variant beyond each framework's default (the variants child is opt-in)."""
    return bool(cfg.variants)


def measure_all(p: Params, data: Path, params_path: Path, threads: int, via: Zygotes) -> tuple[list[str], dict,
                                                                                         list[Measurement]]:
    """Every child of the bench, started `via` zygotes: the rounds, then the opt-in variants and thread children.
    Returns (the rounds' arms, the params' own value of each setting bench.vary may vary, every row)."""
    cfg = p.bench

    def measured(arm: str, kind: str, t: int, label: str, calm: float = 0.0) -> list[Measurement]:
        setting = setting_of(arm)  # a setting arm: the child runs with that one setting changed
        t = setting[1] if setting and setting[0] == "threads" else t
        batch = setting[1] if setting and setting[0] == "train.batch_size" else None
        got = zygote.spawn(via, data, params_path, framework_of(arm), kind, t, label, batch, calm)
        k = got[0]
        log.info("%s: %s; speedometer %.0f GFLOP/s calm (%d readings)%s; %.1f s (%.1f s to start%s)", label,
                 ", ".join(f"{r.model} {r.variant} " + (f"train {r.rate('train'):,.0f} samples/s"
                                                        if r.status == "ok" else r.status)
                           for r in got if r.status != "absent"), rounds.level(k),
                 1 + sum(len(u["per_call_s"]) for r in got for u in r.samples.values()),
                 f", {min(r.train.repeats for r in got if r.train)} calm repeats of training" if k.samples else "",
                 k.child_wall_s, k.child_setup_s, ", forked" if k.child_forked else "")
        return got

    def extra(fw: str, kind: str, t: int, label: str) -> list[Measurement]:
        got = measured(fw, kind, t, label)
        for r in got:
            r.kind, r.arm = kind, fw
        return got

    own = {"train.batch_size": p.train.batch_size, "threads": threads}
    arms = rounds.arms(p.frameworks, cfg.control, cfg.vary, cfg.vary_values, own.get(cfg.vary))
    rows = rounds.run_rounds(lambda arm, rd, calm: measured(arm, "round", threads, f"round {rd + 1} {arm}", calm), arms,
                             cfg.rounds, cfg.max_drift, log.warning, cfg.max_s)
    if variants_asked(cfg):  # opt-in: the compile variants' first steps cost 15-25 s a process here
        rows += [r for fw in p.frameworks for r in extra(fw, "variants", threads, f"{fw} variants")]
    on_gpu = gpus(rows)
    if on_gpu and cfg.thread_counts:  # CPU threads only feed the GPU's launches there: nothing a GPU user tunes
        log.info("thread sweep skipped: the children ran on %s, not on the CPU's threads", ", ".join(on_gpu))
    rows += [r for fw in p.frameworks for t in cfg.thread_counts if t != threads and not on_gpu
             for r in extra(fw, "threads", t, f"{fw} {t} threads")]
    return arms, own, rows


def run(p: Params, data: Path, params_path: Path, threads: int, shape: tuple[int, int, int],
        classes: int) -> tuple[dict, dict]:
    """The whole bench on `threads` threads: (records.json, metrics.json), each ready to write."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with Zygotes(p.bench.fork, telemetry.gpu_used(p.device)) as via:
        arms, own, rows = measure_all(p, data, params_path, threads, via)
    flops = {m: net.flops_per_sample() for m, (net, _) in params.networks(p, shape, classes).items()}
    records, metrics = summary(rows, p, threads, flops, arms, own)
    for v in records["verdicts"]:
        log.info("%s %s%s: %s", v["model"], v["phase"], " (A/A control)" if v["control"] else "", v["text"])
    return records | {"started_utc": started}, metrics


def summary(rows: list[Measurement], p: Params, threads: int, flops: dict[str, int], arms: list[str],
            own: dict) -> tuple[dict, dict]:
    """What the bench writes from whatever rows its children left (any of them flagged, or none usable): the
    per-cell figures, the verdicts with their gates, the flags (records.json) and the numbers (metrics.json)."""
    cfg = p.bench
    on_gpu = gpus(rows)
    stab = speedo.stability(rounds.calibrations(rows))  # the whole run's machine; verdicts use their rounds' own
    cells = per_cell(rows, flops, stab.gflops_median)
    verdicts = comparisons(rows, p.frameworks, p.models, cfg, own)
    flagged = sorted({(r.round, r.arm, r.flag) for r in rows if r.flag and r.kind == "round"})  # the drift monitor's
    records = {
        "format": FORMAT, "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "frameworks": p.frameworks, "models": p.models, "threads": threads, "arms": arms, "rounds": cfg.rounds,
        "rounds_run": 1 + max((r.round for r in rows if r.kind == "round"), default=-1), "max_s": cfg.max_s,
        "min_effect": cfg.min_effect, "max_drift": cfg.max_drift, "repeats": cfg.repeats, "flops_per_sample": flops,
        "calibration": asdict(stab), "calm_cv_pct": speedo.stability([100 * v for v in rounds.calm_levels(rows)] or
                                                                    [float("nan")] * 2).cv_pct,
        "devices": sorted({r.device for r in rows}), "threads_skipped": bool(on_gpu and cfg.thread_counts),
        "vary": cfg.vary, "vary_own": own.get(cfg.vary),  # the setting varied and the params' own value of it
        "flagged": [{"round": rd, "arm": arm, "why": why} for rd, arm, why in flagged],
        "cells": [c.flat() for c in cells], "verdicts": [asdict(v) for v in verdicts],
        "records": [r.flat() for r in rows]}
    metrics = {  # numbers only, units in the names, for dvc metrics
        "calib_gflops": stab.gflops_median, "calib_cv_pct": stab.cv_pct, "flagged_children": len(flagged),
        **{f"{c.framework}-{c.model}": {k: v for k, v in c.flat().items() if isinstance(v, (int, float))}
           for c in cells},
        **{f"{v.model}_{v.phase}_{_metric_name(v)}": {
            "ratio": v.ratio, "ci_low": v.ci_low, "ci_high": v.ci_high, "rounds": v.rounds} for v in verdicts}}
    return records, metrics
