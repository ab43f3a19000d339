"""Warmup / repeat / median / IQR helpers shared by both backends' benchmarks.

Warmup calls are never timed (they include tracing, compilation, allocator growth, worker start-up).
Timed calls are grouped into repeats; a figure is the median over repeats with its IQR and CV.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.errors import ParamsError


def spread(values: list[float] | np.ndarray) -> dict[str, float]:
    """Median, quartiles, IQR and coefficient of variation (%) of repeated measurements."""
    v = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    mean = v.mean()
    cv = float(100.0 * v.std(ddof=1) / mean) if len(v) > 1 and mean > 0 else 0.0
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "cv_pct": cv,
            "n": int(len(v))}


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


def rates(per_step_s: list[float], items_per_step: int) -> dict[str, float]:
    """Samples/s over repeats (median, quartiles, IQR, CV) and the median step time: one measurement's figures."""
    r = spread([items_per_step / t for t in per_step_s])
    return {"samples_per_s": r["median"], "samples_per_s_q1": r["q1"], "samples_per_s_q3": r["q3"],
            "samples_per_s_iqr": r["iqr"], "cv_pct": r["cv_pct"], "repeats": r["n"],
            "step_time_ms_median": float(np.median(per_step_s) * 1e3)}


def batches(take: Callable, data: Any, order: np.ndarray, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """One epoch's full batches in `order`: one gather into contiguous memory, then slices (views in PyTorch).

    Full batches only: a last, smaller batch would change shapes (TensorFlow would retrace into a shape-generic
    graph) and weigh its samples more. Both frameworks drop the same few samples, a different few each epoch.
    """
    if len(order) < batch_size:  # no full batch at all: training would divide by zero, the bench spin forever
        raise ParamsError(f"params.yaml: train.batch_size: {batch_size} is more than the {len(order)} training "
                          "images; lower it")
    full = len(order) // batch_size * batch_size
    x, y = take(data, order[:full])
    for i in range(0, full, batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


def step_timings(take: Callable, step: Callable, sync: Callable, data: Any, order: np.ndarray, batch_size: int,
                 warmup: int, steps: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds per step of each repeat) of `step(x, y)` over the train stage's data
    path (`batches` through `order`, cycling)."""
    def endless() -> Iterator[tuple[Any, Any]]:
        while True:
            yield from batches(take, data, order, batch_size)
    it = endless()

    def run(k: int) -> Any:
        out = None
        for _ in range(k):
            out = step(*next(it))
        return out
    t0 = time.perf_counter()
    sync(run(1))  # the first step: tracing, compilation, allocator growth
    first = time.perf_counter() - t0
    return first, repeat(run, warmup - 1, steps, repeats, sync)
