"""The report's Speed section: rates over rounds, verdicts, the A/A control, stability.

The report's speed section: rates over rounds, verdicts with their intervals, the A/A control, the machine's
stability and bench.vary settings (with device memory). Blocks as in sections.py; the opt-in sweeps (variants,
thread counts) are in sweeps.py.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backends import shown
from pipeline.probe import speedo
from pipeline.records import BenchCell, Cell, framework_of, infer_sizes, is_control, setting_of
from pipeline.report import figures
from pipeline.report.device import gpu_state_text
from pipeline.report.results import Results, arm_label, bench_rows, children, gpus

GAP = 0.15  # a train-stage rate this far from the bench's gets an explanation
STEADY_CV_PCT = 5.0  # a speedometer this steady over the run (a third of GAP) cannot explain a GAP-sized difference


def _spread(c: BenchCell, phase: str) -> str:
    s = getattr(c, phase)
    return f"{s.samples_per_s:,.0f} [{s.samples_per_s_q1:,.0f}–{s.samples_per_s_q3:,.0f}]"


def stability_text(r: Results) -> str:
    cal, b = r.calibration, r.bench
    flagged = b["flagged"]
    meters = sorted({m for rec in b["records"] if (m := rec.get("speedometer"))})
    what = "; ".join(meters) if meters else speedo.DESCRIPTION  # records from before speedometers were named
    threads = "" if gpus(r) else f"; {b.get('threads', '?')} threads"  # a device matmul uses no host threads
    if threads and b.get("vary") == "threads":  # rounds.calibrations: the thread arms read another speed
        threads += ", the bench.vary thread arms' own readings judged apart"
    text = (f"**Machine stability**: the speedometer ({what}{threads}, run before and after every child) gave "
            f"{cal.gflops_median:,.0f} GFLOP/s median [IQR {cal.gflops_q1:,.0f}–{cal.gflops_q3:,.0f}], "
            f"CV {cal.cv_pct:.1f}% over {cal.n} calibrations. ")
    read = [next((m for m in rows if math.isfinite(m.host_calib_before_gflops)), None)  # NaN on a CPU, in older
            for rows in children(r.measured).values()]  # records and in rows not measured; a child's rows share it
    host = [v for m in read if m for v in (m.host_calib_before_gflops, m.host_calib_after_gflops)]
    if host:
        h = speedo.stability(host)
        text += (f"The host's CPU GEMM, read beside it (a launch-bound GPU step runs at the host's pace, which the "
                 f"device's matmul does not see; not used to flag children): {h.gflops_median:,.0f} GFLOP/s "
                 f"median, CV {h.cv_pct:.1f}% over {h.n} readings. ")
    text += gpu_state_text(r) + repeats_text(r)
    if flagged:
        why = {}
        for f in flagged:  # one reason, many children: said once with whom it held
            why.setdefault(f["why"].split(":")[0].split(" for ")[0], []).append(
                f"{arm_label(f['arm'])} in round {f['round'] + 1}")
        text += (f"{len(flagged)} round child(ren) were flagged and left out of the medians: " + "; ".join(
            f"{reason} ({', '.join(who)})" for reason, who in why.items()) + ". A ratio they are part of counts "
            "only where both children of its round met the same calm speed (a slow spell that held both).")
    else:
        text += "No child was flagged."
    return text + children_text(r)


def repeats_text(r: Results) -> str:
    """How the children's calm repeats went: how many repeats there were, and how many a busy machine cost."""
    seen = calm = 0
    for rows in children(r.of_kind("round")).values():
        m = rows[0]
        if not m.samples:  # a child read only before and after (older records)
            continue
        for row in rows:
            for u in row.samples.values():
                ok = [min(b, a) >= (1 - r.bench.get("max_drift", 0.25)) * m.calm_level_gflops
                      for b, a in zip(u["before_gflops"], u["after_gflops"])]
                seen, calm = seen + len(ok), calm + sum(ok)
    if not seen:
        return ""
    return (f"Between the children's {seen:,} timed repeats their framework's own matmul was read {seen:,} times "
            f"more; {calm:,} repeats ({100 * calm / seen:.0f}%) ran on a calm machine and make the figures, the "
            "others touched a slow spell and were left out. ")


def children_text(r: Results) -> str:
    """Where a round's time goes: each framework's median child, launch to exit, before its first measurement,
    on the speedometer and measuring the models, and how it started (older records lack the later parts)."""
    own: dict[str, list] = {}
    for rows in children(r.of_kind("round")).values():
        m = rows[0]
        if math.isfinite(m.child_wall_s):
            measuring = sum(x.measure_s for x in rows if math.isfinite(x.measure_s))  # a row not measured took none
            own.setdefault(m.framework, []).append((m.child_wall_s, m.child_setup_s, m.child_calib_s, measuring,
                                                    m.child_forked))
    parts = []
    for fw, got in own.items():
        wall, setup, calib, measuring = np.median([g[:4] for g in got], axis=0)
        how = "forked from a process that had imported it" if got[0][4] else "a new interpreter, imports included"
        where = f", {calib:.1f} s on the speedometer, {measuring:.1f} s measuring" if math.isfinite(calib) else ""
        parts.append(f"{shown(fw)} {wall:.1f} s: {setup:.1f} s before its first measurement{where} ({how})")
    return f" A round child took (median): {'; '.join(parts)}." if parts else ""


def gap_text(r: Results, c: BenchCell, bench_rate: float) -> str | None:
    """Why the train stage's samples/s differs from the bench's by more than GAP, from the train stage's own
    history: its start (tracing, warm-up, first evaluation interval) or the machine's speed at another time."""
    cell = Cell(c.framework, c.model)
    if cell not in r.train:
        return None
    m, hist = r.train[cell], r.history[cell]
    gap = m.train_samples_per_s / bench_rate - 1
    if abs(gap) <= GAP:
        return None
    head = (f"{shown(c.framework)} {c.model}: the train stage ran at {m.train_samples_per_s:,.0f} "
            f"samples/s, {100 * gap:+.0f}% from the bench's {bench_rate:,.0f}. ")
    if len(hist) < 2:
        return head + "It evaluated once, so its figure includes its tracing/warm-up, which the bench times apart."
    batch = r.run[cell].get("batch_size", 0)
    steady = (hist["step"].iloc[-1] - hist["step"].iloc[0]) * batch / (hist["train_s"].iloc[-1] -
                                                                       hist["train_s"].iloc[0])
    if abs(steady / bench_rate - 1) <= GAP:
        return head + (f"After its first evaluation it ran at {steady:,.0f} samples/s: the gap is its start "
                       "(tracing, compilation, allocator warm-up), which the bench times apart.")
    cv = r.calibration.cv_pct
    held = (f"Even after its first evaluation it ran at {steady:,.0f} samples/s, while the speedometer held "
            f"(CV {cv:.1f}%)")
    if cv <= STEADY_CV_PCT and steady < bench_rate:  # the machine held its speed: the loop's work around its steps
        return head + held + (": the gap is the train loop's work around its steps, which the bench does not time "
                              "(each epoch's batch gather, the loss and accuracy sums, learning-rate updates, the "
                              "wait before each evaluation); where a step takes a millisecond, as on a GPU, that is "
                              "a visible share. Time to target counts it, as a user's run would.")
    if cv <= STEADY_CV_PCT:
        return head + held + (": the bench's timed steps ran slower than the same steps in training. A timed repeat "
                              "too short for the clock reads slow: raise `bench.min_repeat_s`.")
    return head + (f"Even after its first evaluation it ran at {steady:,.0f} samples/s: the stages ran minutes apart "
                   "and this machine's speed drifts (see the calibration above); compare rates within one stage.")


def setting_rows(r: Results) -> pd.DataFrame:
    """Usable round rows of each framework's own arm and its bench.vary arms, with the setting's value (no rows,
    the same columns, when no round child was usable)."""
    rows = bench_rows(r)
    rows = rows[(rows["kind"] == "round") & (rows["flag"].fillna("") == "") & (rows["status"] == "ok")
                & ~rows["arm"].map(is_control, na_action="ignore").fillna(False).astype(bool)].copy()
    return rows.assign(value=[s[1] if (s := setting_of(a)) else r.bench.get("vary_own") for a in rows["arm"]],
                       framework=[framework_of(a) for a in rows["arm"]])


def setting_table(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per framework, model and setting value: the median training samples/s over usable rounds, and the device
    memory training peaked at (a GPU's allocator count; a CPU keeps none)."""
    rows = rows.assign(framework=rows["framework"].map(shown), train_mem_peak_mb=rows.get("train_mem_peak_mb", np.nan))
    out = rows.groupby(["framework", "model", "value"], sort=False).agg(**{
        "train samples/s": ("train_samples_per_s", "median"),
        "train memory peak MiB": ("train_mem_peak_mb", "median")}).reset_index()
    if out["train memory peak MiB"].isna().all():
        out = out.assign(**{"train memory peak MiB": "n/a on a CPU"})
    first = {k: i for i, k in enumerate(dict.fromkeys(zip(out["framework"], out["model"])))}  # the run's order
    out = out.assign(cell=[first[k] for k in zip(out["framework"], out["model"])]).sort_values(["cell", "value"])
    return out.drop(columns="cell").rename(columns={"value": key}).reset_index(drop=True)


def infer_table(r: Results) -> pd.DataFrame:
    """Inference samples/s per framework and model at each bench.infer_batch_sizes value: the median over the
    usable rounds of each framework's own arm (every child measures every inference batch size)."""
    rows = setting_rows(r)
    rows = rows[[not setting_of(a) for a in rows["arm"]]]
    cols = {f"infer{bs}_samples_per_s": f"batch {bs}, samples/s" for bs in infer_sizes(rows.columns)}
    if rows.empty:
        return pd.DataFrame(columns=["framework", "model", *cols.values()])
    out = rows.assign(framework=rows["framework"].map(shown)).groupby(["framework", "model"], sort=False)[list(cols)]
    return out.median().rename(columns=cols).reset_index()


NO_ROUND = ("no usable round: every round child of {what} was flagged by the drift monitor (see Machine stability), "
            "so its figures are left out; rerun the bench when the machine is calmer (`dvc repro -f -s bench`) or "
            "give it more rounds (`bench.max_s`)")


def how_measured(wanted: int, measured: int, again: int, repeats: int) -> str:
    """The Speed section's first paragraph: how its verdicts are reached, and which estimator they rest on."""
    return (f"How this is measured: {wanted} usable rounds wanted per comparison, {measured} measured ({again} with "
            "a child flagged). In each round every framework's default path runs once in its own fresh process, in "
            "alternating order (ABC, CBA, …), so the machine's drift hits all alike, and the first framework runs "
            "again as an A/A control (a round after the first ones runs only the arms of the comparisons still "
            "short of usable rounds). Inside each process every unit (a model's training step, its inference at "
            "each batch size) is timed in short repeats, the units in turn, with a short reading of the "
            "speedometer (a fixed matmul in the framework's own kernels) between any two repeats. A repeat is calm "
            "when both readings around it show the machine within `bench.max_drift` of the calm speed, and the "
            f"estimator is the median of a unit's calm repeats ({repeats} of them: the process goes on until every "
            "unit has them), so a slow spell on a shared machine costs the repeats it touched, not the process. A "
            "verdict uses the ratio of two frameworks' figures in each round whose two processes met the same calm "
            "speed: \"X is faster\" only when the exact confidence interval of the median ratio excludes 1 and the "
            "median is at least the minimum effect away from 1; otherwise \"no clear difference\". The control must "
            "read \"no clear difference\"; when it tells identical runs apart, the framework verdicts of that model "
            "and phase are withheld.")


def speed_blocks(r: Results, figdir: Path) -> list:
    b = r.bench
    if r.lacks("bench"):
        return [("h2", "Speed"), ("p", f"Not measured: {r.lacks('bench')}.")]
    cells = r.bench_cells
    measured = len({r["round"] for r in b["records"] if r["kind"] == "round"})
    again = len({f["round"] for f in b["flagged"]})
    table = pd.DataFrame([{
        "framework": shown(c.framework), "model": c.model,
        "train samples/s [IQR over rounds]": _spread(c, "train"), "train CV %": c.train.cv_pct,
        "train stage samples/s": m.train_samples_per_s if (m := r.train.get(Cell(c.framework, c.model)))
        else np.nan,
        "train % peak": c.train.pct_of_peak, "train % own calib": c.train.pct_of_own_calib,
        "infer samples/s [IQR]": _spread(c, "infer"), "infer % peak": c.infer.pct_of_peak,
        "latency p50/p95/p99 ms": "/".join(f"{v:.3g}" for v in (c.latency_ms_p50, c.latency_ms_p95,
                                                                 c.latency_ms_p99)),
        "first step s": c.first_step_s} for c in cells])
    lines = [f"**{v.model} {v.phase}**, {arm_label(v.a)} vs {arm_label(v.b)}"
             f"{' (A/A control)' if v.control else ''}: {v.text}" for v in r.verdicts if not v.setting]
    settings = [f"**{v.model} {v.phase}**, {arm_label(v.a)} vs its params' value: {v.text}"
                for v in r.verdicts if v.setting]
    if settings:  # bench.vary: another value of one step setting, as extra arms of the same rounds
        lines += ["**Settings, interleaved** (`bench.vary`): each framework at another value of one setting ran "
                  "as an extra arm of the same rounds, so these ratios are paired round by round like the "
                  "framework verdicts above (ratio = the setting's rate over the params' own value's)."] + settings
    arms = setting_rows(r)
    figs = ([("table", setting_table(arms, b["vary"])),
             ("img", figures.settings(arms, b["vary"], figdir / "settings.png"),
              f"Training samples/s against {b['vary']}, interleaved arms (median over usable rounds, IQR)")]
            if len(arms) else [("p", f"No settings table: {NO_ROUND.format(what='any arm')}.")]) \
        if settings and b.get("vary", "none") != "none" else []
    lost = [arm_label(a) for a in b.get("arms", []) if not setting_of(a) and not is_control(a)
            and framework_of(a) not in {c.framework for c in cells}]  # a framework with no usable round at all
    said = f"{NO_ROUND.format(what=', '.join(lost))}." if lost else ""
    plotted = r.of_kind("round")  # the right panel shows every child's speedometer, flagged ones too
    rounds_fig = ("img", figures.rounds([replace(v, a=arm_label(v.a), b=arm_label(v.b)) for v in r.verdicts],
                                        bench_rows(r), b.get("flagged", []), figdir / "rounds.png"),
                  "Left: each round's ratio (dots), its median and interval (bar). Right: the calibration GEMM "
                  "before and after every child, in run order (red: flagged)") if plotted else \
        ("p", "No figure of the rounds: the bench left no round child.")
    gaps = [g for c in cells if (g := gap_text(r, c, c.train.samples_per_s))]
    return [
        ("h2", "Speed"),
        ("p", how_measured(b.get("rounds", measured - again), measured, again, b.get("repeats", 1))),
        ("p", stability_text(r)),
        *([("table", table)] + [("p", said)] * bool(said) if len(table) else
          [("p", f"No speed table: {NO_ROUND.format(what='any framework')}.")]),
        *([("p", "Inference against batch size (`bench.infer_batch_sizes`; the table above shows the largest), "
                 "median over usable rounds:"), ("table", infer)] if len(infer := infer_table(r)) else []),
        *[("p", line) for line in lines], *figs,
        ("p", "Training counts 3× forward FLOPs. % peak: share of the run's median speedometer rate (the "
              f"{'matmul on the GPU, at the run precision' if gpus(r) else 'host GEMM'}); % own calib: share of "
              "each process's own calibration (a rough figure across runs: the GEMM does not follow every slowdown). "
              "Both can pass 100% where convolution kernels beat the matmul. First step: tracing/compilation, timed "
              "apart."),
        *[("p", g) for g in gaps], rounds_fig,
    ]
