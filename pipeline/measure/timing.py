"""Timing rules shared by every measurement: untimed warmup, timed repeats, rates with spread.

Warmup calls are never timed (they include tracing, compilation, allocator growth, worker start-up).
Timed calls are grouped into repeats; a figure is the median over repeats with its IQR and CV.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from pipeline.measure.stats import spread
from pipeline.records import Rates


def repeat(run: Callable[[int], Any], warmup: int, steps: int, repeats: int,
           sync: Callable[[Any], None] = lambda _: None) -> list[float]:
    """Seconds per step for each repeat: `run(n)` does n steps; `sync(result)` waits for async devices."""
    if warmup:
        sync(run(warmup))
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(run(steps))
        per_step.append((time.perf_counter() - t0) / steps)
    return per_step


def latencies(call: Callable[[], Any], warmup: int, calls: int,
              sync: Callable[[Any], None] = lambda _: None) -> np.ndarray:
    """Seconds of each of `calls` single calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        sync(call())
    out = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        sync(call())
        out[i] = time.perf_counter() - t0
    return out


def rates(per_step_s: list[float], items_per_step: int) -> Rates:
    """Samples/s over repeats (median, quartiles, IQR, CV) and the median step time: one measurement's figures."""
    r = spread([items_per_step / t for t in per_step_s])
    return Rates(r.median, r.q1, r.q3, r.iqr, r.cv_pct, r.n, float(np.median(per_step_s) * 1e3))
