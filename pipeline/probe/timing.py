"""Timing rules shared by every measurement: untimed warmup, timed repeats, rates with spread.

Warmup calls are never timed (they include tracing, compilation, allocator growth, worker start-up).
Timed calls are grouped into repeats; a figure is the median over repeats with its IQR and CV. A repeat must
last `min_s` to be timed at all: a GPU step takes a millisecond or two, and five of them are mostly the timer's and
the synchronisation's own cost, so a shorter repeat is discarded (it served as warmup) and run again with more
steps, as torch.utils.benchmark's blocked_autorange does. A CPU step is slow enough that nothing changes there.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from pipeline.probe.stats import spread
from pipeline.records import Rates

MAX_STEPS = 100_000  # a bound on a lengthened repeat, whatever a broken clock says


def lengthened(steps: int, took_s: float, min_s: float) -> int:
    """Steps for a repeat to last about 1.2 x min_s, when `steps` took `took_s` (at least one more, at most
    MAX_STEPS)."""
    return min(MAX_STEPS, max(steps + 1, math.ceil(steps * 1.2 * min_s / max(took_s, 1e-9))))


Clock = Callable[[], float]  # seconds, monotonic: time.perf_counter, or a test's scripted clock


def repeat(run: Callable[[int], Any], warmup: int, steps: int, repeats: int,
           sync: Callable[[Any], None] = lambda _: None, min_s: float = 0.0,
           clock: Clock = time.perf_counter) -> list[float]:
    """Seconds per step for each repeat: `run(n)` does n steps; `sync(result)` waits for async devices. A repeat
    shorter than `min_s` is discarded and the steps per repeat raised to last about 1.2 x min_s."""
    if warmup:
        sync(run(warmup))
    per_step: list[float] = []
    while len(per_step) < repeats:
        t0 = clock()
        sync(run(steps))
        took = clock() - t0
        if took < min_s and steps < MAX_STEPS:
            steps = lengthened(steps, took, min_s)
            continue
        per_step.append(took / steps)
    return per_step


def latencies(call: Callable[[], Any], warmup: int, calls: int, sync: Callable[[Any], None] = lambda _: None,
              clock: Clock = time.perf_counter) -> np.ndarray:
    """Seconds of each of `calls` single calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        sync(call())
    out = np.empty(calls)
    for i in range(calls):
        t0 = clock()
        sync(call())
        out[i] = clock() - t0
    return out


def rates(per_step_s: list[float], items_per_step: int) -> Rates:
    """Samples/s over repeats (median, quartiles, IQR, CV) and the median step time: one measurement's figures."""
    r = spread([items_per_step / t for t in per_step_s])
    return Rates(r.median, r.q1, r.q3, r.iqr, r.cv_pct, r.n, float(np.median(per_step_s) * 1e3))
