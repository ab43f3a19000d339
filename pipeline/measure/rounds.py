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
from pipeline.records import PHASES, Measurement, control_arm, framework_of, is_control, setting_arm, setting_of


def arms(frameworks: list[str], control: bool, vary: str = "none", values: list[int] = (),
         own: int | None = None) -> list[str]:
    """The arms of a round: every framework, the first one again as the A/A control, and, with a setting varied
    (bench.vary), every framework at each of its other values."""
    out = list(frameworks) + ([control_arm(frameworks[0])] if control else [])
    return out + [setting_arm(fw, vary, v) for fw in frameworks for v in values if vary != "none" and v != own]


def pairs(arm_names: list[str]) -> list[tuple[str, str]]:
    """(a, b) for every comparison the rounds serve, a's rate over b's: each pair of frameworks (in the params'
    order), the first framework against its A/A control, and each setting arm against its own framework's arm."""
    plain = [a for a in arm_names if setting_of(a) is None and not is_control(a)]
    out = [(a, b) for i, a in enumerate(plain) for b in plain[i + 1:]]
    out += [(framework_of(c), c) for c in arm_names if is_control(c)]
    out = out or [(plain[0], plain[0])]  # one framework, no control: nothing to compare, said as no verdict
    return out + [(a, framework_of(a)) for a in arm_names if setting_of(a) is not None]


def flag(before: float, after: float, reference: float, max_drift: float) -> str:
    """Why one process's figures cannot be trusted ("" if they can), from the speedometer read `before` and
    `after` it: the machine changed speed during it, or it ran wholly at a speed unlike the run's usual one
    (`reference`, the median calibration so far). The scaling launches judge by this rule, as a child read only
    before and after does (judge)."""
    if speedo.drift(before, after) > max_drift:
        return f"machine speed changed {100 * (after / before - 1):+.0f}% during the measurement"
    if min(before, after) < (1 - max_drift) * reference:
        return f"machine at {100 * min(before, after) / reference:.0f}% of the run's usual speed"
    return ""


def level(k: Measurement) -> float:
    """The machine's calm speed as a child saw it: its calm level (the upper decile of the readings between its
    repeats, taken in its framework's own matmul), or, for a child read only before and after, their mean."""
    return k.calm_level_gflops if math.isfinite(k.calm_level_gflops) else k.own_calib_gflops()


def _group(k: Measurement) -> tuple[int, str]:
    """Whose levels compare: a child's readings are in its framework's own kernels, on its thread count."""
    return k.threads, k.framework


def judge(got: list[Measurement], reference: float, max_drift: float) -> str:
    """Why a round child's figures stay out of the medians ("" if they do not): a unit with too few calm repeats
    (the machine was busy for nearly all of it: NaN figure, so that unit of its round gives no ratio), or a calm
    level unlike the run's (`reference`): the whole child ran in a slow spell. Its units still give ratios where its
    round's other child met the same speed (paired_rounds)."""
    k = got[0]
    if not k.samples:  # read only before and after (an older record, a scripted child)
        return flag(k.calib_before_gflops, k.calib_after_gflops, reference, max_drift)
    busy = [f"{r.model} {unit}" for r in got if r.status == "ok" for unit, rates in
            [("train", r.train), *((f"infer{bs}", x) for bs, x in r.infer.items())] if not math.isfinite(
                rates.samples_per_s)]
    if busy:
        return f"too few calm repeats for {', '.join(busy)}: the machine was busy for nearly all of them"
    if reference and level(k) < (1 - max_drift) * reference:
        return f"machine at {100 * level(k) / reference:.0f}% of the run's calm speed throughout"
    return ""


def reference(rows: list[Measurement], group: tuple[int, str], last: int | None = None) -> float:
    """The run's calm speed so far for a (threads, framework) group: the median calm level of its children (of the
    last `last` rounds only: what a child is given to tell calm repeats from busy ones, so that a machine slower for
    good soon becomes the new normal there); 0 before the first."""
    latest = max((r.round for r in rows), default=-1)
    got = [level(r) for r in _children(rows) if _group(r) == group and (last is None or r.round > latest - last)]
    return float(np.median(got)) if got else 0.0


def calm_levels(rows: list[Measurement]) -> list[float]:
    """Each usable round child's calm level over its group's median (1 = the run's usual calm speed): how steady the
    machine's calm speed was from child to child, whatever the load around the repeats."""
    kids = [k for k in _children(rows) if not k.flag]
    median = {g: float(np.median([level(k) for k in kids if _group(k) == g])) for g in {_group(k) for k in kids}}
    return [level(k) / median[_group(k)] for k in kids]


def _children(rows: list[Measurement]) -> list[Measurement]:
    """One row per round child (its rows share its readings)."""
    return list({(r.round, r.arm): r for r in rows if r.kind == "round"}.values())


def run_rounds(run: Callable[..., list[Measurement]], arm_names: list[str], rounds: int,
               max_drift: float, log: Callable[[str], None] = lambda _: None, max_s: float = math.inf,
               clock: Callable[[], float] = time.monotonic) -> list[Measurement]:
    """Rounds of run(arm, round_index, calm=level) in alternating order until every verdict has `rounds` usable
    rounds (ratios). Each child is given the run's calm speed so far at its thread count (reference), against which
    it tells calm repeats from busy ones. The first `rounds` rounds always run whole; a round after them runs only
    the arms of the comparisons still short of usable rounds (in the same alternating order), and starts only while
    it can end within `max_s` seconds of the start (judged by the longest child so far), so a noisy machine costs a
    known time, not an open-ended one. A flagged child is kept in the records (with the reason, judge). When to stop,
    and which arms run again, depend on flags, calibrations and time only, never on the ratios measured, so neither
    can bias a verdict."""
    rows: list[Measurement] = []
    start, longest, index = clock(), 0.0, 0
    while (short := _short(rows, arm_names, rounds, max_drift)):
        todo = arm_names if index < rounds else [a for a in arm_names if any(a in pair for pair in short)]
        if index >= rounds and clock() - start + longest * len(todo) > max_s:
            break
        order = todo if index % 2 == 0 else list(reversed(todo))
        for arm in order:
            began = clock()
            group = _last_group(rows, arm)
            got = run(arm, index, calm=reference(rows, group, last=2) if group else 0.0)
            longest = max(longest, clock() - began)
            why = judge(got, reference(rows, _group(got[0])), max_drift)
            for r in got:
                r.kind, r.round, r.arm, r.flag = "round", index, arm, why
            rows += got
            if why:
                log(f"round {index + 1}, {arm}: {why}; its figures are left out")  # its ratios: paired_rounds
        index += 1
    if _short(rows, arm_names, rounds, max_drift):
        log(f"bench.max_s ({max_s:g} s) spent after {index} rounds before every comparison had {rounds} usable "
            "rounds: those comparisons get no verdict (raise bench.max_s, or rerun when the machine is calmer)")
    return rows


def _last_group(rows: list[Measurement], arm: str) -> tuple[int, str] | None:
    """The (threads, framework) of `arm`'s children so far (None before its first)."""
    return next((_group(r) for r in reversed(rows) if r.arm == arm), None)


def _short(rows: list[Measurement], arm_names: list[str], rounds: int, max_drift: float) -> list[tuple[str, str]]:
    """The pairs a verdict compares (pairs()) with a model and phase of fewer than `rounds` usable rounds."""
    units = {(r.model, p) for r in rows if r.kind == "round" and r.status == "ok" for p in PHASES} or {("", "")}
    return [(a, b) for a, b in pairs(arm_names)
            if any(len(ratios(rows, a, b, m, p, max_drift)) < rounds for m, p in units)]


def usable(rows: list[Measurement]) -> list[Measurement]:
    """The round rows that medians and the machine's stability use: those of children the drift monitor did not
    flag. Ratios pair children by paired_rounds()."""
    return [r for r in rows if r.kind == "round" and not r.flag]


def paired_rounds(rows: list[Measurement], arm_a: str, arm_b: str, max_drift: float) -> list[int]:
    """The rounds whose arm_a and arm_b children met the same machine: calm levels (level()) within `max_drift` of
    each other, each over the run's median at its thread count (a bench.vary thread arm's speedometer runs on that
    arm's threads), and, for children read only before and after, neither saw its speed change by more (alike). A
    slow spell that held both still pairs them; a third arm flagged in that round does not spoil it."""
    kids = {(r.round, r.arm): r for r in _children(rows)}
    at: dict[tuple[int, str], list[float]] = {}
    for k in kids.values():
        at.setdefault(_group(k), []).append(level(k))
    median = {g: float(np.median(v)) for g, v in at.items()}

    def seen(k: Measurement) -> tuple[float, float]:
        m = median[_group(k)]
        if k.samples:  # its calm repeats are what it measured: only its level says which machine it met
            return level(k) / m, level(k) / m
        return k.calib_before_gflops / m, k.calib_after_gflops / m

    return [rd for rd in sorted({rd for rd, _ in kids}) if (a := kids.get((rd, arm_a))) and (b := kids.get((rd, arm_b)))
            and alike(seen(a), seen(b), max_drift)]


def alike(a: tuple[float, float], b: tuple[float, float], max_drift: float) -> bool:
    """Whether two processes of one round, each read by the speedometer (before, after), met the same machine:
    neither saw its speed change by more than `max_drift`, and their mean readings are within `max_drift` of each
    other. That is interleaving's premise, so a slow spell that held both alike still gives a ratio (their own rates
    stay out of the medians), while a pair measured at different speeds gives none. The bench and scaling share it."""
    return all(speedo.drift(*k) <= max_drift for k in (a, b)) and abs(sum(a) / sum(b) - 1) <= max_drift


def ratios(rows: list[Measurement], arm_a: str, arm_b: str, model: str, phase: str, max_drift: float) -> list[float]:
    """Per round whose two children pair (paired_rounds), arm_a's rate over arm_b's, measured back to back."""
    by = {(r.round, r.arm): r.rate(phase) for r in rows if r.kind == "round" and r.model == model
          and r.status == "ok" and math.isfinite(r.rate(phase))}  # NaN: too few calm repeats (judge)
    return [by[(rd, arm_a)] / by[(rd, arm_b)] for rd in paired_rounds(rows, arm_a, arm_b, max_drift)
            if (rd, arm_a) in by and (rd, arm_b) in by]


def calibrations(rows: list[Measurement]) -> list[float]:
    """Every calibration in `rows` at the run's thread count, once per child: the common speedometer before and after
    it (the denominator of "% of peak"). Thread-sweep children and bench.vary's thread arms run on other counts,
    where the GEMM reads another speed (about half of 2 threads' at 1)."""
    children = {(r.kind, r.round, r.arm): r for r in rows
                if r.kind != "threads" and (setting_of(r.arm) or ("",))[0] != "threads"}
    return [c for r in children.values() for c in (r.calib_before_gflops, r.calib_after_gflops)]
