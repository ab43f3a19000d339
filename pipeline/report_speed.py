"""The report's speed sections: rates over rounds, verdicts with their intervals, the A/A control, the machine's
stability, compile variants and thread scaling. Blocks as in report.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import figures
from pipeline.results import LABEL, Results, bench_rows

GAP = 0.15  # a train-stage rate this far from the bench's gets an explanation


def _label(arm: str) -> str:
    return LABEL.get(arm.rstrip("*"), arm) + (" again" if arm.endswith("*") else "")


def _spread(c: dict, phase: str) -> str:
    return (f"{c[f'{phase}_samples_per_s']:,.0f} [{c[f'{phase}_samples_per_s_q1']:,.0f}–"
            f"{c[f'{phase}_samples_per_s_q3']:,.0f}]")


def stability_text(r: Results) -> str:
    cal, b = r.bench["calibration"], r.bench
    flagged = b["flagged"]
    text = (f"**Machine stability**: the calibration GEMM (fp32 512×512 on {b.get('threads', '?')} threads, run before "
            f"and after every child) gave {cal['gflops_median']:,.0f} GFLOP/s median "
            f"[IQR {cal['gflops_q1']:,.0f}–{cal['gflops_q3']:,.0f}], CV {cal['cv_pct']:.1f}% over {cal['n']} "
            "calibrations. ")
    if flagged:
        where = ", ".join(f"{_label(f['arm'])} in round {f['round'] + 1}" for f in flagged)
        text += (f"{len(flagged)} round child(ren) saw the machine change speed during their measurement "
                 f"({where}); those rounds are left out of the verdicts that involve them.")
    else:
        text += "No child saw the machine change speed during its measurement."
    return text


def gap_text(r: Results, c: dict, bench_rate: float) -> str | None:
    """Why the train stage's samples/s differs from the bench's by more than GAP, from the train stage's own
    history: its start (tracing, warm-up, first evaluation interval) or the machine's speed at another time."""
    cell = f"{c['framework']}-{c['model']}"
    if cell not in r.train:
        return None
    m, hist = r.train[cell], r.history[cell]
    gap = m["train_samples_per_s"] / bench_rate - 1
    if abs(gap) <= GAP:
        return None
    head = (f"{LABEL[c['framework']]} {c['model']}: the train stage ran at {m['train_samples_per_s']:,.0f} "
            f"samples/s, {100 * gap:+.0f}% from the bench's {bench_rate:,.0f}. ")
    if len(hist) < 2:
        return head + "It evaluated once, so its figure includes its tracing/warm-up, which the bench times apart."
    batch = r.run[cell].get("batch_size", 0)
    steady = (hist["step"].iloc[-1] - hist["step"].iloc[0]) * batch / (hist["train_s"].iloc[-1] -
                                                                       hist["train_s"].iloc[0])
    if abs(steady / bench_rate - 1) <= GAP:
        return head + (f"After its first evaluation it ran at {steady:,.0f} samples/s: the gap is its start "
                       "(tracing, compilation, allocator warm-up), which the bench times apart.")
    return head + (f"Even after its first evaluation it ran at {steady:,.0f} samples/s: the stages ran minutes apart "
                   "and this machine's speed drifts (see the calibration above); compare rates within one stage.")


def speed_blocks(r: Results, figdir: Path) -> list:
    b = r.bench
    cells = b["cells"]
    measured = len({r["round"] for r in b["records"] if r["kind"] == "round"})
    again = len({f["round"] for f in b["flagged"]})
    table = pd.DataFrame([{
        "framework": LABEL[c["framework"]], "model": c["model"],
        "train samples/s [IQR over rounds]": _spread(c, "train"), "train CV %": c["train_cv_pct"],
        "train stage samples/s": r.train.get(f"{c['framework']}-{c['model']}", {}).get("train_samples_per_s",
                                                                                     np.nan),
        "train % peak": c["train_pct_of_peak"], "train % own calib": c["train_pct_of_own_calib"],
        "infer samples/s [IQR]": _spread(c, "infer"), "infer % peak": c["infer_pct_of_peak"],
        "latency p50/p95/p99 ms": "/".join(f"{c[f'latency_ms_{q}']:.3g}" for q in ("p50", "p95", "p99")),
        "first step s": c["first_step_s"]} for c in cells])
    lines = [f"**{v['model']} {v['phase']}**, {_label(v['a'])} vs {_label(v['b'])}"
             f"{' (A/A control)' if v['control'] else ''}: {v['text']}" for v in b["verdicts"]]
    gaps = [g for c in cells if (g := gap_text(r, c, c["train_samples_per_s"]))]
    return [
        ("h2", "Speed"),
        ("p", f"How this is measured: {b.get('rounds', measured - again)} usable rounds wanted per comparison, "
              f"{measured} measured ({again} with a child the drift monitor flagged; a flagged child's figures are "
              "left out, its round still counts for the pairs it is not part of); in each, every framework's "
              "default variant runs once in its own fresh process, in alternating order (ABC, CBA, …), so the "
              "machine's drift hits all alike; the "
              "first framework also runs a second time as an A/A control. Each process measures the calibration "
              "GEMM before and after. A verdict uses the ratio of two frameworks' rates measured back to back in "
              "each round: \"X is faster\" only when the exact confidence interval of the median ratio excludes "
              "1 and the median is at least the minimum effect away from 1; otherwise \"no clear difference\". "
              "The control must read \"no clear difference\"; when it tells identical runs apart, the framework verdict "
              "of that model and phase is withheld."),
        ("p", stability_text(r)), ("table", table), *[("p", line) for line in lines],
        ("p", "Training counts 3× forward FLOPs. % peak: share of the run's median calibration GEMM rate; % own "
              "calib: share of each process's own calibration (comparable across runs and machines). Both can "
              "pass 100% where convolution kernels beat the GEMM. First step: tracing/compilation, timed apart."),
        *[("p", g) for g in gaps],
        ("img", figures.rounds(b["verdicts"], bench_rows(r), b.get("flagged", []), figdir / "rounds.png"),
         "Left: each round's ratio (dots), its median and interval (bar). Right: the calibration GEMM before and "
         "after every child, in run order (red: flagged)"),
    ]


def compile_blocks(r: Results, variants_described: dict[str, str]) -> list:
    df = bench_rows(r)
    var = df[df["kind"] == "variants"]
    rows = []
    for rec in var.to_dict("records"):
        ok = rec["status"] == "ok"
        base = var[(var.framework == rec["framework"]) & (var.model == rec["model"]) & (var.status == "ok")]
        default = base.iloc[0] if len(base) else None  # each child measures its default variant first
        rows.append({"framework": LABEL[rec["framework"]], "model": rec["model"], "variant": rec["variant"],
                     "train samples/s": rec["train_samples_per_s"] if ok else np.nan,
                     "vs default (same process)": rec["train_samples_per_s"] / default["train_samples_per_s"]
                     if ok and default is not None else np.nan,
                     "first step s (compile)": rec["first_step_s"] if ok else np.nan,
                     "note": "" if ok else f"unsupported here: {rec.get('reason', '')}"})
    return [("h2", "Compilation"),
            ("p", "; ".join(f"`{k}`: {v}" for k, v in variants_described.items())),
            ("p", "One process per framework measures every variant on the same batches; \"vs default\" is a "
                  "within-process diagnostic, not a verdict. The first step (tracing, compilation) is timed apart "
                  "from the steady-state rate."),
            ("table", pd.DataFrame(rows))]


def thread_blocks(r: Results, figdir: Path) -> list:
    df = bench_rows(r)
    th = df[df["kind"] == "threads"]
    if th.empty:
        return []
    rows = [{"framework": c["framework"], "model": c["model"], "threads": r.bench["threads"],
             "train_samples_per_s": c["train_samples_per_s"]} for c in r.bench["cells"]]
    rows += th[["framework", "model", "threads", "train_samples_per_s"]].to_dict("records")
    long = pd.DataFrame(rows).assign(framework=lambda d: d["framework"].map(LABEL))
    table = long.pivot_table(index=["framework", "model"], columns="threads", values="train_samples_per_s",
                             sort=False).reset_index()
    return [("h2", "Thread scaling"),
            ("p", f"Training samples/s per intra-op thread count, one process each; the {r.bench['threads']}-thread "
                  "figure is the median over rounds."), ("table", table),
            ("img", figures.threads(long, figdir / "threads.png"), "Training samples/s against intra-op threads")]
