"""The machine's speedometer: a fixed fp32 GEMM before and after every benchmark child.

The same NumPy/BLAS kernel in every child, whatever framework it benchmarks, so it is one denominator for "% of
peak", a drift detector (before vs after one measurement), and a normaliser that lets runs and machines be
compared. It is a GEMM rate on these threads, not a hardware limit: convolution kernels can exceed it.
"""
from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.measure.stats import spread

SIZE = 512          # n of the n x n fp32 matmul: big enough to be compute-bound, small enough to run in ms
SECONDS = 0.3       # wall time of one calibration (several timed bursts, median taken)


def gemm_gflops(threads: int, size: int = SIZE, seconds: float = SECONDS) -> float:
    """Median GFLOP/s of an fp32 size x size matmul on `threads` BLAS threads over ~`seconds`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    rates = []
    with threadpool_limits(threads):
        a @ b  # untimed: first call allocates and spins up the pool
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(rates) < 3:
            k, t0 = 0, time.perf_counter()
            while True:
                a @ b
                k += 1
                dt = time.perf_counter() - t0
                if dt > seconds / 10:
                    break
            rates.append(2.0 * size**3 * k / dt / 1e9)
    return float(np.median(rates))


def drift(before: float, after: float) -> float:
    """Relative change of the machine's speed over one measurement: |after/before - 1|."""
    return abs(after / before - 1.0) if before > 0 else float("inf")


def stability(values: list[float]) -> dict:
    """The run's calibration figure with its spread: median, quartiles, and CV (%) over every calibration."""
    s = spread(values)
    return {"gflops_median": s.median, "gflops_q1": s.q1, "gflops_q3": s.q3, "cv_pct": s.cv_pct, "n": s.n}
