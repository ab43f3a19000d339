"""Benchmark one cell in one process: training/inference throughput, batch-1 latency, % of a matmul peak.

Rows are flat dicts with units in the key names; `headline` picks the default variant's figures for DVC.
"""
from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from pipeline import timing
from pipeline.backends import Backend
from pipeline.params import Bench
from pipeline.spec import ModelSpec, Optim, init_weights

log = logging.getLogger("bench")
MAX_SAMPLES = 8192  # in-memory images the timed steps cycle through (enough for any batch in params)


def record(phase: str, variant: str, batch: int, threads: int, per_step_s: list[float], items: int,
           peak_samples_per_s: float | None = None) -> dict:
    """One tidy measurement row: samples/s median and spread over repeats, step time, % of peak."""
    row = {"phase": phase, "variant": variant, "batch_size": batch, "threads": threads, "status": "ok",
           **timing.rates(per_step_s, items)}
    if peak_samples_per_s:
        row["pct_of_peak"] = 100.0 * row["samples_per_s"] / peak_samples_per_s
    return row


def measure_variant(be: Backend, spec: ModelSpec, optim: Optim, data: tuple, variant: str,
                    cfg: Bench, threads: int, peak_gflops: float) -> list[dict]:
    """Training and inference rows for one variant (fresh model from the same initial weights)."""
    fwd = spec.flops_per_sample()
    model = be.build(spec, init_weights(spec, 0))
    rows = [record("train", variant, cfg.batch_size, threads,
                   be.train_timings(model, optim, data, variant, cfg.batch_size, cfg.warmup, cfg.steps, cfg.repeats),
                   cfg.batch_size, peak_gflops * 1e9 / (3 * fwd))]  # training ~ forward + 2x backward
    predict = be.make_predict(model, variant)
    for bs in cfg.infer_batch_sizes:
        xb = be.take(data, np.arange(bs))[0]
        per_call = timing.repeat(lambda k, xb=xb: [predict(xb) for _ in range(k)][-1], cfg.warmup, cfg.steps,
                                 cfg.repeats, be.sync)
        rows.append(record("infer", variant, bs, threads, per_call, bs, peak_gflops * 1e9 / fwd))
    x1 = be.take(data, np.arange(1))[0]
    lat = timing.latencies(lambda: predict(x1), cfg.warmup, cfg.latency_calls, be.sync) * 1e3
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    rows.append({"phase": "latency", "variant": variant, "batch_size": 1, "threads": threads, "status": "ok",
                 "latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99, "calls": len(lat)})
    return rows


def bench(be: Backend, spec: ModelSpec, optim: Optim, x: np.ndarray, y: np.ndarray,
          cfg: Bench, threads: int, variants: list[str]) -> tuple[list[dict], float]:
    """All variants' rows plus the matmul peak (GFLOP/s) measured in this process."""
    reps = -(-max([cfg.batch_size, *cfg.infer_batch_sizes]) // len(y))  # tile a small dataset: every batch full
    data = be.put(np.concatenate([x] * reps), np.concatenate([y] * reps))
    mm = cfg.matmul_size
    peak = [2 * mm**3 / s / 1e9 for s in timing.repeat(be.matmul(mm), cfg.warmup, cfg.steps, cfg.repeats, be.sync)]
    peak_gflops = float(np.median(peak))
    rows = [{"phase": "matmul", "variant": "fp32", "batch_size": mm, "threads": threads, "status": "ok",
             "gflops": peak_gflops, "gflops_iqr": timing.spread(peak)["iqr"]}]
    for variant in tqdm(variants, desc="variants", disable=None):
        try:
            rows += measure_variant(be, spec, optim, data, variant, cfg, threads, peak_gflops)
        except Exception as e:  # an option this machine lacks (no compiler, no XLA) is a result, not a crash
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            log.warning("%s unsupported here: %s", variant, reason)
            rows.append({"phase": "train", "variant": variant, "batch_size": cfg.batch_size, "threads": threads,
                         "status": "unsupported", "reason": reason})
    return rows, peak_gflops


def headline(rows: list[dict], default: str, cfg: Bench, peak_gflops: float) -> dict:
    """Flat metrics (units in the names) of the default variant, for `dvc metrics show/diff`."""
    pick = {(r["phase"], r["batch_size"]): r for r in rows if r["variant"] == default and r["status"] == "ok"}
    tr, inf, lat = (pick.get(("train", cfg.batch_size)), pick.get(("infer", max(cfg.infer_batch_sizes))),
                    pick.get(("latency", 1)))
    out = {"matmul_gflops": peak_gflops}
    if tr:
        out |= {"train_samples_per_s": tr["samples_per_s"], "train_samples_per_s_iqr": tr["samples_per_s_iqr"],
                "train_cv_pct": tr["cv_pct"], "train_step_time_ms_median": tr["step_time_ms_median"],
                "train_pct_of_peak": tr["pct_of_peak"]}
    if inf:
        out |= {"infer_samples_per_s": inf["samples_per_s"], "infer_samples_per_s_iqr": inf["samples_per_s_iqr"],
                "infer_pct_of_peak": inf["pct_of_peak"]}
    if lat:
        out |= {k: lat[k] for k in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99")}
    return out
