"""The report's opt-in speed sweeps: variants (compile, layouts, fit) and thread scaling.

Each within one process per framework (variants) or one per thread count: diagnostics beside the interleaved
verdicts, never verdicts themselves. Blocks as in sections.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backends import shown
from pipeline.report import figures
from pipeline.report.results import Results, gpus


NOTE = {"wrong": "WRONG", "unsupported": "unsupported here", "absent": "not in this framework"}


def variant_blocks(r: Results) -> list:
    var = r.of_kind("variants")
    if r.lacks("bench"):
        return [("h2", "Variants"), ("p", f"Not measured: {r.lacks('bench')}.")]
    if not var:
        return [("h2", "Variants"), ("p", "Not measured in this run: the variants child is opt-in, to keep the "
                 "default run within its budget (torch.compile's first step alone took 14-24 s a process on 2 "
                 "cores). Add it with `dvc exp run -S 'bench.variants=[compile,channels_last,cuda_graphs,fit]'` "
                 "(cuda_graphs needs a GPU).")]
    rows, absent = [], {}
    for m in var:
        if m.status == "absent":  # asked for, but nothing of that name here: one sentence below, not a row per model
            absent.setdefault((shown(m.framework), m.variant, m.reason), []).append(m.model)
            continue
        ok = m.status == "ok"
        # each child measures its default variant first
        default = next((d for d in var if (d.framework, d.model, d.status) == (m.framework, m.model, "ok")), None)
        rows.append({"framework": shown(m.framework), "model": m.model, "variant": m.variant,
                     "train samples/s": m.rate("train") if ok else np.nan,
                     "vs default (same process)": m.rate("train") / default.rate("train")
                     if ok and default is not None else np.nan,
                     "first step s (compile)": m.first_step_s if ok else np.nan,
                     "note": f"{NOTE.get(m.status, m.status)}: {m.reason}" if not ok else
                     "" if m.train.repeats else "no calm repeats: the machine was busy throughout"})
    described = {m.variant: m.description for m in var if m.description}
    return [("h2", "Variants"),
            ("p", "; ".join(f"`{k}`: {v}" for k, v in described.items())),
            ("p", "One process per framework measures every variant on the same batches, each checked first (its "
                  "first two steps' losses must equal the default's); \"vs default\" is a within-process "
                  "diagnostic, not a verdict. The first step (tracing, compilation) is timed apart from the "
                  "steady-state rate."),
            ("table", pd.DataFrame(rows)),
            *[("p", "Not measured: " + "; ".join(f"{fw} `{v}` ({', '.join(models)}): {why}"
                                                 for (fw, v, why), models in absent.items()) + ".")] * bool(absent)]


def thread_blocks(r: Results, figdir: Path) -> list:
    th = r.of_kind("threads")
    if r.lacks("bench"):
        return [("h2", "Thread scaling"), ("p", f"Not measured: {r.lacks('bench')}.")]
    if r.bench.get("threads_skipped"):
        return [("h2", "Thread scaling"), ("p", f"Skipped: the children ran on {', '.join(gpus(r))}, where CPU "
                 "intra-op threads only issue the GPU's kernel launches; batch size, precision and the variants "
                 "are the axes that matter there.")]
    if not th:
        return [("h2", "Thread scaling"), ("p", f"Not measured in this run (all children ran on "
                 f"{r.bench['threads']} threads): the sweep is opt-in, one process per framework and count; add it "
                 "with `dvc exp run -S 'bench.thread_counts=[1,2]'`.")]
    rows = [{"framework": c.framework, "model": c.model, "threads": r.bench["threads"],
             "train_samples_per_s": c.train.samples_per_s} for c in r.bench_cells]
    rows += [{"framework": m.framework, "model": m.model, "threads": m.threads,
              "train_samples_per_s": m.rate("train")} for m in th]
    long = pd.DataFrame(rows).assign(framework=lambda d: d["framework"].map(shown))
    table = long.pivot_table(index=["framework", "model"], columns="threads", values="train_samples_per_s",
                             sort=False)
    table.columns = [f"{t} thread{'s' * (t != 1)}, samples/s" for t in table.columns]  # no nameless header
    table = table.reset_index()
    drawn = long.dropna(subset=["train_samples_per_s"])  # a child busy throughout has no calm repeats to draw
    figure = [("img", figures.threads(drawn, figdir / "threads.png"), "Training samples/s against intra-op threads")
              ] if len(drawn) else [("p", "No figure: no thread count had calm repeats (the machine was busy).")]
    return [("h2", "Thread scaling"),
            ("p", f"Training samples/s per intra-op thread count, one process each; the {r.bench['threads']}-thread "
                  "figure is the median over rounds."), ("table", table), *figure]
