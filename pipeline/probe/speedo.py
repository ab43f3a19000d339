"""The machine's speedometer: a fixed GEMM before and after every benchmark child (CPU or GPU).

On a CPU, the same NumPy/BLAS fp32 kernel in every child, whatever framework it benchmarks, so it is one
denominator for "% of peak", a drift detector (before vs after one measurement), and a normaliser that lets runs
and machines be compared. On a GPU the child's backend times a fixed matmul on the device itself, at the precision
in use (Backend.calibrate), so the figure follows the device, not the host. Either is a GEMM rate, not a hardware
limit: convolution kernels can exceed it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.probe.stats import spread

SIZE = 512          # n of the n x n fp32 matmul: big enough to be compute-bound, small enough to run in ms
SECONDS = 0.3       # wall time of one calibration (several timed bursts, median taken)
READING_S = 0.02    # a short reading between two timed repeats: enough to tell a calm machine from a busy one


WORK = {"train": 3, "infer": 1}  # forward FLOPs per sample a phase costs: training ~ forward + 2x backward
HOST_SECONDS = 0.1  # the host's GEMM beside a GPU's speedometer: a shorter reading, a diagnostic (not a flag)
DEVICE_SIZE = 4096  # on a GPU: large enough to fill the device, so its figure follows clocks and throttling
DESCRIPTION = f"NumPy fp32 GEMM {SIZE}x{SIZE} on the CPU"  # what gemm_gflops measures, for the report


def burst_rate(call: Callable[[], Any], flops: float, sync: Callable[[Any], None] = lambda out: None,
               seconds: float = SECONDS) -> float:
    """Median GFLOP/s of `call` (doing `flops` each time) over ~`seconds`, in bursts of ~seconds/10; `sync`
    waits for a device's queued work after each call (so the clock never runs ahead of the device, and a burst
    is timed to its end). The first call is untimed."""
    sync(call())
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        k, t0 = 0, time.perf_counter()
        while True:
            sync(call())
            k += 1
            dt = time.perf_counter() - t0
            if dt > seconds / 10:
                break
        rates.append(flops * k / dt / 1e9)
    return float(np.median(rates))


def gemm_gflops(threads: int, size: int = SIZE, seconds: float = SECONDS) -> float:
    """Median GFLOP/s of an fp32 size x size matmul on `threads` BLAS threads over ~`seconds`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with threadpool_limits(threads):
        return burst_rate(lambda: a @ b, 2.0 * size**3, seconds=seconds)


def drift(before: float, after: float) -> float:
    """Relative change of the machine's speed over one measurement: |after/before - 1|."""
    return abs(after / before - 1.0) if before > 0 else float("inf")


@dataclass(frozen=True)
class Calibration:
    """The speedometer over a run: median with quartiles, and CV (%) over its `n` readings."""
    gflops_median: float
    gflops_q1: float
    gflops_q3: float
    cv_pct: float
    n: int


def stability(values: list[float]) -> Calibration:
    """The run's calibration figure with its spread: median, quartiles, and CV (%) over every calibration."""
    s = spread(values)
    return Calibration(s.median, s.q1, s.q3, s.cv_pct, s.n)


def share_pct(samples_per_s: Any, phase: str, flops_per_sample: int, gflops: Any) -> Any:
    """A rate as % of a speedometer reading ("% of peak"): the phase's FLOP/s over the GEMM's (arrays too)."""
    return 100 * samples_per_s * WORK[phase] * flops_per_sample / (gflops * 1e9)
