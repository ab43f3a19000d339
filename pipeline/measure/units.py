"""A child's timed units, their repeats interleaved and each read beside the speedometer.

A unit is one thing a round child times: a model's training step, or its inference at one batch size. After each
unit's warmup, the child cycles through its units round-robin, one short timed repeat each (at least
`bench.min_repeat_s` long), with a short speedometer reading between every two repeats, so each repeat is
bracketed by a reading before and after it. On a shared machine noise mostly adds delay, in spells: a repeat is
*calm* when both its readings show the machine at its calm speed (within `bench.max_drift` of the child's calm
level, the upper decile of its readings, or the run's, when the bench passes it), and a unit's figure is the median
rate of its calm repeats. A slow spell therefore costs the repeats it touched, not the process; and since every unit
is visited in turn, a spell lands on all of them alike. The child goes on until every unit has `bench.repeats` calm
repeats, or `bench.repeat_max_s` has passed (a unit still short is then unusable, and said).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.probe.stats import spread
from pipeline.probe.timing import Clock, lengthened
from pipeline.records import Rates

CALM_QUANTILE = 90  # the percentile of a child's speedometer readings taken as its calm level


@dataclass
class Unit:
    """One timed thing: `run(k)` makes k calls of `items` samples each (unsynchronised)."""
    model: str
    phase: str                        # "train" | "infer"
    items: int                        # samples per call: the batch size
    run: Callable[[int], Any]
    calls: int = 1                    # calls per repeat, lengthened to last min_repeat_s
    per_call_s: list[float] = field(default_factory=list)  # each repeat's seconds per call
    before: list[float] = field(default_factory=list)      # the speedometer reading before each repeat
    after: list[float] = field(default_factory=list)       # and after it (GFLOP/s)


def calm_level(readings: list[float], floor: float = 0.0, max_drift: float = 1.0) -> float:
    """The machine's calm speed as these readings show it: their upper decile (a spell only ever lowers a
    reading), or `floor` (the run's calm level so far) when that is higher and the readings met it (within
    max_drift) at all: a child that ran wholly in a spell is judged at its own level, and the bench pairs it only
    with a child that met the same spell."""
    own = float(np.percentile(readings, CALM_QUANTILE)) if readings else 0.0
    return floor if own < floor and own >= (1 - max_drift) * floor else own or floor


def calm(u: Unit, level: float, max_drift: float) -> list[bool]:
    """Which of the unit's repeats ran on a calm machine: both readings around it within max_drift of `level`."""
    return [min(b, a) >= (1 - max_drift) * level for b, a in zip(u.before, u.after)]


def rates(u: Unit, level: float, max_drift: float, wanted: int) -> Rates:
    """The unit's figure from its calm repeats (samples/s median, quartiles, CV; `repeats`: how many were calm);
    NaN figures when fewer than `wanted` were (the machine was busy for nearly all of it)."""
    kept = [t for t, ok in zip(u.per_call_s, calm(u, level, max_drift)) if ok]
    s = spread([u.items / t for t in kept] if len(kept) >= wanted else [])
    return Rates(s.median, s.q1, s.q3, s.iqr, s.cv_pct, len(kept),
                 float(np.median(kept) * 1e3) if s.n else float("nan"))


def size(u: Unit, warmup: int, min_s: float, sync: Callable[[Any], None], clock: Clock) -> None:
    """Untimed warmup, then the calls per repeat: lengthened until one repeat lasts `min_s` (timing.repeat's rule)."""
    if warmup:
        sync(u.run(warmup))
    while True:
        t0 = clock()
        sync(u.run(u.calls))
        took = clock() - t0
        if took >= min_s or u.calls >= 100_000:
            return
        u.calls = lengthened(u.calls, took, min_s)


def interleave(units: list[Unit], reading: Callable[[], float], sync: Callable[[Any], None], wanted: int,
               max_drift: float, max_s: float, run_level: float = 0.0,
               clock: Clock = time.perf_counter) -> list[float]:
    """Repeats of every unit in turn, a speedometer reading between any two, until each unit has `wanted` calm
    repeats (judged against the calm level so far: calm_level) and every unit at least `wanted` repeats, or `max_s`
    seconds have passed. Returns every reading, in order."""
    readings = [reading()]
    start = clock()
    while True:
        for u in units:
            t0 = clock()
            sync(u.run(u.calls))
            u.per_call_s.append((clock() - t0) / u.calls)
            readings.append(reading())
            u.before.append(readings[-2])
            u.after.append(readings[-1])
        level = max(run_level, calm_level(readings))  # waiting for the run's calm speed, within max_s
        if all(sum(calm(u, level, max_drift)) >= wanted for u in units) or clock() - start > max_s:
            return readings
