"""The scaling measurement: calibrated, interleaved launches; efficiency; verdicts per N.

A round launches every framework at every worker count in `scale.workers` (alternating order, fresh processes),
with the machine's GEMM read before and after each launch (speedo; a launch whose speed moved by more than
`bench.max_drift`, or that ran wholly at an unusual speed, is flagged and left out of the medians: the bench's
rule). Samples/s per framework, model and worker count from the usable launches; scaling efficiency
rate(N) / (N x rate(1)) paired within a round, in the rounds whose two launches met the same machine (rounds.alike,
the bench's pairing rule: a slow spell that held both still counts); the communication share (one step's gradient
all-reduce timed alone, over the step time: an upper bound, as DDP overlaps it with the backward pass); and at each
N a speed verdict between the frameworks (verdict.speed on the paired rounds' ratios).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.backends import scalable, shown
from pipeline.errors import ParamsError
from pipeline.measure import verdict
from pipeline.measure.verdict import Verdict
from pipeline.measure.rounds import alike, flag
from pipeline.params import Params
from pipeline.probe import speedo, telemetry
from pipeline.probe.stats import spread
from pipeline.scale.launch import check_ports, launch

log = logging.getLogger("scale")
Config = tuple[str, int]  # (framework, workers)


def plan(p: Params, threads: int, gpus: int) -> list[str]:
    """The frameworks to launch. Workers on GPUs (device cuda, or auto where `gpus` are visible) get one device
    each, so a launch may not outnumber them; workers on the CPU share its threads, so each must get one."""
    on_gpu = telemetry.gpu_used(p.device, gpus)
    top = max(p.scale.workers)
    if on_gpu and top > gpus:
        raise ParamsError(f"params.yaml: scale.workers: {top} workers need a GPU each, and {gpus} "
                          f"{'is' if gpus == 1 else 'are'} visible; lower it (or device: cpu)")
    too_many = [n for n in p.scale.workers if threads // n < 1]
    if too_many and not on_gpu:
        raise ParamsError(f"params.yaml: scale.workers: {too_many[0]} workers on {threads} threads leave a worker "
                          "without a thread (each gets threads / workers); lower it or raise threads")
    return scalable(p.frameworks)


def rounds(p: Params, frameworks: list[str], data: Path, params_path: Path, threads: int) -> list[dict]:
    """Every launch's rows, each with its round, calibration and flag (the bench's rule: rounds.flag)."""
    check_ports(p.scale.host, p.scale.port, max(p.scale.workers))
    configs = [(f, n) for f in frameworks for n in p.scale.workers]
    wanted = comparisons(frameworks, p.scale.workers)
    rows: list[dict] = []
    calibrations: list[float] = []
    r = 0
    # Rounds go on past scale.rounds (up to twice as many) while a comparison lacks scale.rounds paired rounds:
    # the calibrations decide, never the rates, so stopping cannot bias a verdict.
    while r < p.scale.rounds or (r < 2 * p.scale.rounds and any(
            len(paired(rows, x, y, p.bench.max_drift)) < p.scale.rounds for x, y in wanted)):
        for fw, n in configs if r % 2 == 0 else reversed(configs):
            host0 = speedo.gemm_gflops(threads)
            got = launch(fw, n, max(threads // n, 1), p.models, data, params_path, p.scale)
            host1 = speedo.gemm_gflops(threads)
            read = _readings(got, host0, host1)
            calibrations += [read["calib_before_gflops"], read["calib_after_gflops"]]
            why = flag(read["calib_before_gflops"], read["calib_after_gflops"], float(np.median(calibrations)),
                       p.bench.max_drift)
            rows += [row | read | {"round": r, "flag": why} for row in got]
            label = f"{r + 1}/{p.scale.rounds}" if r < p.scale.rounds else f"{r + 1} (again: comparisons short)"
            log.info("round %s, %s at %d worker%s: %s%s", label, fw, n, "s" * (n > 1),
                     ", ".join(f"{x['model']} {x['samples_per_s']:,.0f} samples/s" for x in got),
                     f" (flagged: {why})" if why else "")
        r += 1
    return rows



def _readings(got: list[dict], host0: float, host1: float) -> dict:
    """A launch's speedometer: its rank 0's device readings where its workers ran on a GPU (worker.calibrated),
    with the host's GEMM beside them, recorded (the bench's rule); on a CPU the GEMM read around the launch."""
    if "speedometer" not in got[0]:
        return {"calib_before_gflops": host0, "calib_after_gflops": host1, "speedometer": speedo.DESCRIPTION}
    return {"calib_before_gflops": got[0]["calib_before_gflops"], "calib_after_gflops": got[0]["calib_after_gflops"],
            "speedometer": got[0]["speedometer"], "host_calib_before_gflops": host0, "host_calib_after_gflops": host1}


def comparisons(frameworks: list[str], workers: list[int]) -> list[tuple[Config, Config]]:
    """The launches each figure compares within a round: every worker count against 1 worker (efficiency), each
    framework against the next at every count (verdicts); a lone configuration against itself (held steady)."""
    eff = [((fw, n), (fw, 1)) for fw in frameworks for n in workers if n != 1 and 1 in workers]
    fws = [((a, n), (b, n)) for a, b in zip(frameworks, frameworks[1:]) for n in workers]
    return eff + fws or [((fw, n), (fw, n)) for fw in frameworks for n in workers]


def paired(rows: list[dict], x: Config, y: Config, max_drift: float) -> list[int]:
    """The rounds in which configurations x and y were both launched and met the same machine (rounds.alike)."""
    calib = {(r["framework"], r["workers"], r["round"]): (r["calib_before_gflops"], r["calib_after_gflops"])
             for r in rows}
    return sorted(rd for (fw, n, rd) in calib if (fw, n) == x and (*y, rd) in calib
                  and alike(calib[(*x, rd)], calib[(*y, rd)], max_drift))


def _rate(rows: list[dict], fw: str, model: str, n: int, usable: bool = True) -> dict[int, float]:
    """round -> samples/s of one configuration's launches: the unflagged ones (medians), or all (paired ratios)."""
    return {r["round"]: r["samples_per_s"] for r in rows
            if (r["framework"], r["model"], r["workers"]) == (fw, model, n) and not (usable and r["flag"])}


def summary(rows: list[dict], frameworks: list[str], models: list[str], workers: list[int],
            min_effect: float, max_drift: float) -> tuple[list[dict], list[dict]]:
    """(one row per framework, model and worker count; the frameworks' verdicts at each worker count). Medians use
    the unflagged launches; efficiency and verdicts the rounds whose two launches pair (paired())."""
    table, verdicts = [], []
    for model in models:
        for fw in frameworks:
            one = _rate(rows, fw, model, 1, usable=False)
            for n in workers:
                rate, every = _rate(rows, fw, model, n), _rate(rows, fw, model, n, usable=False)
                eff = [every[r] / (n * one[r]) for r in paired(rows, (fw, n), (fw, 1), max_drift)
                       if r in every and r in one]
                comm = [x["comm_share"] for x in rows
                        if (x["framework"], x["model"], x["workers"]) == (fw, model, n) and not x["flag"]]
                s, ci = spread(list(rate.values())), verdict.median_ci(eff) if eff else None
                table.append({"framework": fw, "model": model, "workers": n, "rounds": len(rate),
                              "samples_per_s": s.median, "samples_per_s_q1": s.q1, "samples_per_s_q3": s.q3,
                              "efficiency": float(np.median(eff)) if eff else float("nan"),
                              "efficiency_ci_low": ci[1] if ci else float("nan"),
                              "efficiency_ci_high": ci[2] if ci else float("nan"),
                              "comm_share": float(np.median(comm)) if comm else float("nan")})
        for a, b in ((a, b) for i, a in enumerate(frameworks) for b in frameworks[i + 1:]):  # each pair
            for n in workers:
                ra, rb = _rate(rows, a, model, n, usable=False), _rate(rows, b, model, n, usable=False)
                ratios = [ra[r] / rb[r] for r in paired(rows, (a, n), (b, n), max_drift) if r in ra and r in rb]
                verdicts.append(asdict(Verdict(**asdict(verdict.speed(shown(a), shown(b), ratios, min_effect)),
                                               model=model, phase="train", a=a, b=b, workers=n, ratios=ratios)))
    return table, verdicts


def run(p: Params, data: Path, params_path: Path, threads: int) -> tuple[dict, dict]:
    """(records, metrics) of the scale stage; without scale.workers, a record that says nothing was measured."""
    if not p.scale.workers:
        return {"measured": False, "rows": [], "table": [], "verdicts": []}, {}
    frameworks = plan(p, threads, telemetry.gpu_count())
    rows = rounds(p, frameworks, data, params_path, threads)
    table, verdicts = summary(rows, frameworks, p.models, p.scale.workers, p.bench.min_effect,
                              p.bench.max_drift)
    calib = asdict(speedo.stability([x for r in rows for x in (r["calib_before_gflops"], r["calib_after_gflops"])]))
    metrics = {f"{t['framework']}-{t['model']}-w{t['workers']}": {
        k: t[k] for k in ("samples_per_s", "efficiency", "comm_share")} for t in table}
    records = {"measured": True, "threads": threads, "workers": p.scale.workers, "rounds": p.scale.rounds,
               "rounds_run": 1 + max(r["round"] for r in rows),
               "global_batch": p.train.batch_size, "host": p.scale.host,
               "calibration": calib, "speedometer": rows[0]["speedometer"],
               "flagged": sum(bool(r["flag"]) for r in rows) // max(len(p.models), 1),
               "rows": rows, "table": table, "verdicts": verdicts}
    return records, metrics | {"calib_gflops": calib["gflops_median"]}
