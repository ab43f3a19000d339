"""Interleaved rounds of fresh children in alternating order, with the drift monitor.

Rounds: every arm (framework, and the A/A control) runs once per round in its own fresh process, in alternating
order (ABC, CBA, ...), so slow drift of the machine hits every arm alike; the drift monitor flags a child whose
calibration moved or sat at an unusual level, and rounds go on until every comparison has its usable rounds (a
round beyond the first ones runs only the arms of the comparisons still short of them). A round's two children
pair when both held steady and met the same machine speed (`paired_rounds`).

A verdict rests on the per-round ratios of two arms measured back to back (`ratios`), never on one process's
repeats.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from pipeline.probe import speedo
from pipeline.records import Measurement, control_arm, framework_of, setting_arm, setting_of


def arms(frameworks: list[str], control: bool, vary: str = "none", values: list[int] = (),
         own: int | None = None) -> list[str]:
    """The arms of a round: every framework, the first one again as the A/A control, and, with a setting varied
    (bench.vary), every framework at each of its other values."""
    out = list(frameworks) + ([control_arm(frameworks[0])] if control else [])
    return out + [setting_arm(fw, vary, v) for fw in frameworks for v in values if vary != "none" and v != own]


def pairs(arm_names: list[str]) -> list[tuple[str, str]]:
    """(a, b) for every comparison the rounds serve, a's rate over b's: the first framework against each other one
    and its control; each setting arm against its own framework's arm."""
    plain = [a for a in arm_names if setting_of(a) is None]
    out = [(plain[0], a) for a in plain[1:]] or [(plain[0], plain[0])]
    return out + [(a, framework_of(a)) for a in arm_names if setting_of(a) is not None]


def flag(before: float, after: float, reference: float, max_drift: float) -> str:
    """Why one process's figures cannot be trusted ("" if they can), from the speedometer read `before` and
    `after` it: the machine changed speed during it, or it ran wholly at a speed unlike the run's usual one
    (`reference`, the median calibration so far). The bench's children and the scaling launches share this rule."""
    if speedo.drift(before, after) > max_drift:
        return f"machine speed changed {100 * (after / before - 1):+.0f}% during the measurement"
    if min(before, after) < (1 - max_drift) * reference:
        return f"machine at {100 * min(before, after) / reference:.0f}% of the run's usual speed"
    return ""


def run_rounds(run: Callable[[str, int], list[Measurement]], arm_names: list[str], rounds: int, max_drift: float,
               log: Callable[[str], None] = lambda _: None, max_s: float = math.inf,
               clock: Callable[[], float] = time.monotonic) -> list[Measurement]:
    """Rounds of run(arm, round_index) in alternating order until every verdict has `rounds` usable rounds (its two
    arms' children paired in the same round: paired_rounds). The first `rounds` rounds always run whole; a round after
    them runs only the arms of the comparisons still short of usable rounds (in the same alternating order), and
    starts only while it can end within `max_s` seconds of the start (judged by the longest child so far), so a
    noisy machine costs a known time, not an open-ended one. A flagged child is kept in the records (with the
    reason). When to stop, and which arms run again, depend on flags, calibrations and time only, never on the
    ratios measured, so neither can bias a verdict."""
    rows: list[Measurement] = []
    seen: dict[int, list[float]] = {}  # calibrations per thread count: bench.vary's thread arms read their own speed
    start, longest, index = clock(), 0.0, 0
    while (short := _short(rows, arm_names, rounds, max_drift)):
        todo = arm_names if index < rounds else [a for a in arm_names if any(a in pair for pair in short)]
        if index >= rounds and clock() - start + longest * len(todo) > max_s:
            break
        order = todo if index % 2 == 0 else list(reversed(todo))
        round_rows = []
        for arm in order:
            began = clock()
            got = run(arm, index)
            longest = max(longest, clock() - began)
            same = seen.setdefault(got[0].threads, [])
            same += [got[0].calib_before_gflops, got[0].calib_after_gflops]
            why = flag(got[0].calib_before_gflops, got[0].calib_after_gflops, float(np.median(same)), max_drift)
            for r in got:
                r.kind, r.round, r.arm, r.flag = "round", index, arm, why
            round_rows += got
            if why:
                log(f"round {index + 1}, {arm}: {why}; its figures are left out")  # its ratio: paired_rounds
        rows += round_rows
        index += 1
    if _short(rows, arm_names, rounds, max_drift):
        log(f"bench.max_s ({max_s:g} s) spent after {index} rounds before every comparison had {rounds} usable "
            "rounds: those comparisons get no verdict (raise bench.max_s, or rerun when the machine is calmer)")
    return rows


def _short(rows: list[Measurement], arm_names: list[str], rounds: int, max_drift: float) -> list[tuple[str, str]]:
    """The pairs a verdict compares (pairs()) that have fewer than `rounds` usable rounds."""
    return [(a, b) for a, b in pairs(arm_names) if len(paired_rounds(rows, a, b, max_drift)) < rounds]


def usable(rows: list[Measurement]) -> list[Measurement]:
    """The round rows that medians and the machine's stability use: those of children the drift monitor did not
    flag. Ratios pair children by paired_rounds()."""
    return [r for r in rows if r.kind == "round" and not r.flag]


def paired_rounds(rows: list[Measurement], arm_a: str, arm_b: str, max_drift: float) -> list[int]:
    """The rounds whose arm_a and arm_b children can be compared (alike(), on each child's calibrations over the
    run's median at its thread count: a bench.vary thread arm's speedometer runs on that arm's threads). A third
    arm flagged in that round does not spoil it."""
    kids = {(r.round, r.arm): r for r in rows if r.kind == "round"}
    at: dict[int, list[float]] = {}
    for k in kids.values():
        at.setdefault(k.threads, []).extend((k.calib_before_gflops, k.calib_after_gflops))
    median = {t: float(np.median(v)) for t, v in at.items()}

    def level(k: Measurement) -> tuple[float, float]:
        return k.calib_before_gflops / median[k.threads], k.calib_after_gflops / median[k.threads]

    return [rd for rd in sorted({rd for rd, _ in kids}) if (a := kids.get((rd, arm_a))) and (b := kids.get((rd, arm_b)))
            and alike(level(a), level(b), max_drift)]


def alike(a: tuple[float, float], b: tuple[float, float], max_drift: float) -> bool:
    """Whether two processes of one round, each read by the speedometer (before, after), met the same machine:
    neither saw its speed change by more than `max_drift`, and their mean readings are within `max_drift` of each
    other. That is interleaving's premise, so a slow spell that held both alike still gives a ratio (their own rates
    stay out of the medians), while a pair measured at different speeds gives none. The bench and scaling share it."""
    return all(speedo.drift(*k) <= max_drift for k in (a, b)) and abs(sum(a) / sum(b) - 1) <= max_drift


def ratios(rows: list[Measurement], arm_a: str, arm_b: str, model: str, phase: str, max_drift: float) -> list[float]:
    """Per round whose two children pair (paired_rounds), arm_a's rate over arm_b's, measured back to back."""
    by = {(r.round, r.arm): r.rate(phase) for r in rows if r.kind == "round" and r.model == model
          and r.status == "ok"}
    return [by[(rd, arm_a)] / by[(rd, arm_b)] for rd in paired_rounds(rows, arm_a, arm_b, max_drift)
            if (rd, arm_a) in by and (rd, arm_b) in by]


def calibrations(rows: list[Measurement]) -> list[float]:
    """Every calibration in `rows` at the run's thread count, once per child: thread-sweep children and bench.vary's
    thread arms run on other counts, where the GEMM reads another speed (about half of 2 threads' at 1)."""
    children = {(r.kind, r.round, r.arm): r for r in rows
                if r.kind != "threads" and (setting_of(r.arm) or ("",))[0] != "threads"}
    return [c for r in children.values() for c in (r.calib_before_gflops, r.calib_after_gflops)]
