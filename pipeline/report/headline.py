"""The headline: time to target per model with its verdict (report first lines, headline.json).

Time to target = steps to target x time per step. With six seeds or more the seeds' own times are paired; with
fewer, the steps each framework needed (train) meet the bench's interleaved per-step verdict
(verdict.time_to_target). With three frameworks or more a model's line is a ranking, each framework before the
next with the verdict between them (every pair's verdict is in the Time to target section). The headline also says
how far the run's speed evidence goes, and what to do when noise withheld a verdict.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backends import shown
from pipeline.measure import verdict
from pipeline.measure.verdict import Said, Verdict
from pipeline.records import Cell, CellMetrics
from pipeline.report import figures
from pipeline.report.results import Results, arm_label, gpus, history_rows, pair_label, pairs


def time_to_target_blocks(r: Results, figdir: Path) -> list:
    """The headline: per model, each framework's time to the target validation accuracy, paired over seeds."""
    rows, lines = [], []
    for cell, m in r.train.items():
        t = m.time_to_target_s
        rows.append({"model": cell.model, "framework": shown(cell.framework), "target val acc": m.target_val_acc,
                     "reached (seeds)": f"{m.reached_seeds}/{m.seeds}",
                     "time to target s [range]": f"{t:.1f} [{m.time_to_target_s_min:.1f}–"
                                                 f"{m.time_to_target_s_max:.1f}]" if t is not None
                     else f"diverged ({m.diverged_seeds}/{m.seeds} seeds)" if m.diverged_seeds
                     else f"not reached (best {m.best_val_acc:.4f})",
                     "epochs to target": f"{m.epochs_to_target:.2f}" if t is not None else "—",
                     "steps to target": _steps(r, cell),
                     "at bench speed s": _at_bench_speed(r, cell),
                     "test acc at stop %": 100 * m.test_acc})
    for model, ca, cb in pairs(r):
        v = time_to_target_verdict(r, ca, cb)
        lines.append(f"**{model}**, {pair_label(ca, cb)}, time to target: {v.text}")
    hist = history_rows(r).assign(framework=lambda d: d["framework"].map(shown)).dropna(subset=["val_acc"])
    targets = {c.model: m.target_val_acc for c, m in r.train.items()}
    figure = ("img", figures.time_to_target(hist, targets, figdir / "time_to_target.png"),
              "Validation accuracy against training time (first seed), both frameworks; dashed: the target") \
        if len(hist) else ("p", "No figure of validation accuracy against training time: no cell left an evaluation "
                                "with a finite loss" + (f" ({r.lacks(*map(_stage, r.cells()))})"
                                                        if r.lacks(*map(_stage, r.cells())) else "") + ".")
    return [("h2", "Time to target accuracy"),
            ("p", "What a user choosing a framework pays: training seconds (evaluation excluded) until validation "
                  "accuracy first reaches the target, as MLPerf and DAWNBench measure it; training stops there "
                  "(`train.stop_at_target`) and test accuracy is measured at the stop. Time to target = steps to "
                  "target x time per step. Seed k starts both frameworks from the same weights and batch order, so "
                  f"with {verdict.min_rounds()} seeds or more (`train.repeats`) the verdict pairs the seeds' own "
                  "times; with fewer, it combines the steps each framework needed with the bench's interleaved "
                  "per-step verdict (the train cells run as separate stages, minutes apart, and the machine's drift enters "
                  "their own times). The steps must agree: to within one evaluation, or, further apart, as the "
                  "crossings of two flat curves that agree at every evaluation both made (a draw of the "
                  "validation noise, not of the maths; Equivalence shows the test). `at bench "
                  "speed`: steps to target x batch size / the bench's median training rate."),
            ("table", pd.DataFrame(rows)), *[("p", line) for line in lines], figure]


def _stage(cell: Cell) -> str:
    return f"train@{cell}"


def time_to_target_verdict(r: Results, ca: Cell, cb: Cell) -> Said:
    """With enough seeds, the paired verdict over seeds on the train stage's own times; with fewer (one, by
    default), steps to target (train) x time per step (the bench's interleaved verdict), verdict.time_to_target."""
    if ca not in r.train or cb not in r.train:
        return Said(text=f"no verdict: {r.lacks(_stage(ca), _stage(cb))}")
    a, b = r.seeds[ca].set_index("seed"), r.seeds[cb].set_index("seed")
    paired = [s for s in a.index if s in b.index]
    if len(paired) >= verdict.min_rounds():
        both = [s for s in paired if a.at[s, "reached"] and b.at[s, "reached"]]
        # per seed (same initial weights and batch order in both): B's time over A's, i.e. A's speed-up
        ratios = [b.at[s, "time_to_target_s"] / a.at[s, "time_to_target_s"] for s in both]
        # the same rule and minimum effect as the bench's
        return verdict.speed(shown(ca.framework), shown(cb.framework), ratios, r.bench["min_effect"], unit="seeds")
    per_step = next((v for v in r.verdicts if v.model == ca.model and v.phase == "train"
                     and (v.a, v.b) == (ca.framework, cb.framework)),
                    Said(text="no verdict: " + (r.lacks("bench") or "the bench did not compare them")))
    per_step = replace(per_step, winner=shown(per_step.winner))  # an older bench's records say "torch"
    return verdict.time_to_target(shown(ca.framework), shown(cb.framework), _window(r, ca), _window(r, cb),
                                  per_step, curves(r, ca, cb))


def curves(r: Results, ca: Cell, cb: Cell) -> verdict.Agreement | None:
    """Whether the two cells' first seeds' validation curves agree at the steps both evaluated (verdict.curves_agree);
    None for a run that did not record its validation set's size."""
    n_val = r.run.get(ca, {}).get("val_samples")
    if n_val is None or ca not in r.history or cb not in r.history:
        return None
    both = r.history[ca][["step", "val_acc"]].merge(r.history[cb][["step", "val_acc"]], on="step").dropna()
    return verdict.curves_agree(list(both["val_acc_x"]), list(both["val_acc_y"]), int(n_val))


def _window(r: Results, cell: Cell) -> tuple[int, int] | None:
    """(since, at) for the first seed (the one whose history is kept): the target was first met at the evaluation
    of step `at`, and not at the one before, of step `since` (0 when it was the first)."""
    seeds = r.seeds[cell]
    first = seeds.iloc[0]
    if not first["reached"]:
        return None
    at = int(first["steps_to_target"])
    steps = r.history[cell]["step"]
    return int(steps[steps < at].max()) if (steps < at).any() else 0, at


def _reached_steps(r: Results, cell: Cell) -> pd.Series:
    s = r.seeds[cell]
    return s.loc[s["reached"].astype(bool), "steps_to_target"]


def _steps(r: Results, cell: Cell) -> str:
    """Median steps to target over the seeds that reached it."""
    got = _reached_steps(r, cell)
    return f"{np.median(got):,.0f}" if len(got) else "—"


def _at_bench_speed(r: Results, cell: Cell) -> str:
    """Time to target at the bench's interleaved training rate: median steps x batch size / samples/s."""
    got = _reached_steps(r, cell)
    bc = next((c for c in r.bench_cells if (c.framework, c.model) == cell), None)
    if not len(got) or bc is None:
        return "—"
    return f"{np.median(got) * r.run[cell]['batch_size'] / bc.train.samples_per_s:.1f}"


def _withheld(verdicts: list[Verdict]) -> list[Verdict]:
    """The speed verdicts the noise gates withheld (as opposed to "no clear difference")."""
    return [v for v in verdicts if v.winner is None and v.text.startswith("no verdict")]


def _estimate(r: Results, cell: Cell) -> float:
    """A cell's time to target for ranking: at the bench's speed (steps x batch / rate), else the train stage's own
    time; infinite when it did not reach the target or left no results."""
    got = _at_bench_speed(r, cell)
    if got != "—":
        return float(got)
    m = r.train.get(cell)
    return m.time_to_target_s if m and m.time_to_target_s is not None else float("inf")


def _ranked_by(r: Results, cell: Cell) -> str:
    """The figure a ranking orders a cell by (_estimate), in words: the train stage's own seconds ran minutes apart
    from the other cells', so the order comes from the bench's interleaved rate where there is one."""
    m, bench = r.train.get(cell), _at_bench_speed(r, cell)
    if m is None:
        return "no results"
    return f"{bench} s to {m.target_val_acc:g} at bench speed" if bench != "—" else _ttt(m)


def ranking(r: Results, model: str) -> str:
    """One model's line with three frameworks or more: the frameworks by time to target, each before the next with
    the verdict between the two."""
    cells = sorted((Cell(fw, model) for fw in r.frameworks), key=lambda c: _estimate(r, c))
    order = " before ".join(f"{shown(c.framework)} ({_ranked_by(r, c)})" for c in cells)
    pos = r.frameworks.index  # each pair's verdict is the params' order's: a before b there

    def between(a: Cell, b: Cell) -> str:
        x, y = (a, b) if pos(a.framework) < pos(b.framework) else (b, a)
        return f"{shown(x.framework)} vs {shown(y.framework)}: {time_to_target_verdict(r, x, y).text}"
    return f"**{model}**, time to target: {order}; " + "; ".join(between(a, b) for a, b in zip(cells, cells[1:]))


def headline(r: Results) -> list:
    """The report's first lines: each model's time-to-target verdict, and how far this run's speed evidence goes
    (how noisy the machine was, and what it would take when a verdict is withheld)."""
    lines = []
    for model, ca, cb in pairs(r) if len(r.frameworks) == 2 else []:
        v = time_to_target_verdict(r, ca, cb)
        times = ", ".join(f"{shown(c.framework)} {_ttt(r.train[c]) if c in r.train else 'no results'}"
                          for c in (ca, cb))
        lines.append(f"**{model}** ({times}): {v.text}")
    lines += [ranking(r, m) for m in r.models] if len(r.frameworks) > 2 else []
    if len(r.frameworks) == 1:  # nothing to compare, but what was measured still comes first
        fw = r.frameworks[0]
        lines += [f"**{m}** ({shown(fw)} {_ttt(r.train[Cell(fw, m)])}): no verdict: one framework in this run "
                  "(list another in `frameworks` to compare)" for m in r.models if Cell(fw, m) in r.train]
    b, cal = r.bench, r.calibration
    children = len(r.of_kind("round")) // max(len(r.models), 1)
    withheld = _withheld(r.verdicts)
    calm = f", the calm speed steady to CV {b['calm_cv_pct']:.1f}%" if b.get("calm_cv_pct") is not None else ""
    noise = (f"Speed evidence: {b['rounds_run']} interleaved rounds, {children} fresh processes, "
             f"{len(b['flagged'])} flagged by the drift monitor; "
             f"{'device speedometer (a matmul on the GPU)' if gpus(r) else 'calibration GEMM'} "
             f"{cal.gflops_median:,.0f} GFLOP/s median, CV {cal.cv_pct:.1f}%{calm}." if cal.n else
             f"Speed evidence: none ({r.lacks('bench') or 'the bench left no child'}).")
    if withheld:
        names = ", ".join(f"{v.model} {v.phase}" + (" (A/A control)" if v.control else "")
                          + (f" ({arm_label(v.setting)})" if v.setting else "")
                          + (f" ({arm_label(v.a)} vs {arm_label(v.b)})" if len(r.frameworks) > 2 and not v.control
                             and not v.setting else "") for v in withheld)
        noise += (f" **{len(withheld)} of {len(r.verdicts)} speed comparisons got no verdict**: {names} (the "
                  f"first: {withheld[0].text}). The machine was too noisy for them: rerun the bench when it is "
                  f"calmer (`dvc repro -f -s bench`), or give it more rounds (`bench.max_s`, now {b['max_s']} s).")
    # what the env stage warned of comes first: a GPU machine measured on its CPU; speed figures that are the
    # cores' contention
    alerts = {"Measured on the CPU, not the GPU": r.env.get("gpu_unseen"),
              "More threads than cores": r.env.get("oversubscribed"),
              "Not in this report": "; ".join(r.missing.values())}  # a stage that left nothing: what to run
    first = [("p", f"**{title}**: {text}.") for title, text in alerts.items() if text]
    return first + [("p", line) for line in lines] + [("p", noise)]


def _ttt(m: CellMetrics) -> str:
    if m.time_to_target_s is not None:
        return f"{m.time_to_target_s:.1f} s to {m.target_val_acc:g}"
    return "diverged" if m.diverged_seeds else f"not reached (best {m.best_val_acc:.4f})"


def metrics(r: Results) -> dict:
    """reports/headline.json, for `dvc metrics show` and `dvc exp show`: per model, each framework's time to
    target, test accuracy and bench rates, then the verdicts (winner or "none") with their ratios; and the run's
    speed evidence. Short on purpose: every other figure is in the per-stage metrics and results.csv."""
    cal, verdicts = r.calibration, r.verdicts
    out: dict = {"calib_gflops": cal.gflops_median, "calib_cv_pct": cal.cv_pct,
                 "flagged_children": len(r.bench["flagged"]),
                 "speed_verdicts_withheld": len(_withheld(verdicts))}
    bench = {(c.framework, c.model): c for c in r.bench_cells}
    for model, ca, cb in pairs(r):
        m = out.setdefault(model, {})
        for c in (ca, cb):
            t, b = r.train.get(c), bench.get(c)
            m |= {f"{c.framework}_time_to_target_s": t.time_to_target_s if t else None,
                  f"{c.framework}_test_acc": t.test_acc if t else None,
                  f"{c.framework}_train_samples_per_s": b.train.samples_per_s if b else None,
                  f"{c.framework}_infer_samples_per_s": b.infer.samples_per_s if b else None}
        pair = f"{ca.framework}_vs_{cb.framework}"
        m[f"{pair}_time_to_target_winner"] = time_to_target_verdict(r, ca, cb).winner or "none"
        for v in verdicts:
            if (v.model, v.a, v.b) == (model, ca.framework, cb.framework):
                m |= {f"{pair}_{v.phase}_ratio": v.ratio, f"{pair}_{v.phase}_winner": shown(v.winner) or "none"}
    return {"headline": out}  # one namespace: `dvc exp show --keep 'headline\.'` finds every column
