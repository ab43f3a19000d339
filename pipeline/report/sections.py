"""The report's sections: time to target, accuracy, loaders, equivalence, environment.

The report as blocks (headings, prose, tables, figures) that render.py turns into Markdown and HTML.

Every verdict goes through verdict.py's noise-aware wording; every number comes from results.collect().
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backends import about, short, shown
from pipeline.data.prepare import IMBALANCE, prepared_meta
from pipeline.measure import verdict
from pipeline.records import Cell
from pipeline.report import figures, render, scaling, speed, sweeps
from pipeline.report.headline import curves, headline, time_to_target_blocks
from pipeline.report.results import RUN_SETTINGS, Results, history_rows, loader_rows, pair_label, pairs


def accuracy_verdicts(r: Results) -> list[str]:
    out = []
    for model, ca, cb in pairs(r):
        if ca not in r.train or cb not in r.train:
            out.append(f"**{model}**, {pair_label(ca, cb)}: no verdict: {r.lacks(f'train@{ca}', f'train@{cb}')}")
            continue
        y = r.preds[ca]["y_true"]
        right_a, right_b = r.preds[ca]["y_pred"] == y, r.preds[cb]["y_pred"] == y
        p = verdict.mcnemar_p(right_a, right_b)
        out.append(f"**{model}**, {pair_label(ca, cb)}: " + verdict.accuracy(
            shown(ca.framework), list(r.seeds[ca]["test_acc"]), shown(cb.framework),
            list(r.seeds[cb]["test_acc"]), p, int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))))
    return out


def equivalence(r: Results) -> pd.DataFrame:
    rows = []
    for model, ca, cb in pairs(r):
        if ca not in r.train or cb not in r.train:  # said by accuracy_verdicts and the first lines
            continue
        ra, rb = r.run[ca], r.run[cb]
        diff = float(np.abs(r.preds[ca]["init_logits"] - r.preds[cb]["init_logits"]).max())
        rows.append({"model": model,
                     "same parameter counts (per layer)": ra["layer_param_counts"] == rb["layer_param_counts"],
                     "same initial weights (SHA-256)": ra["init_weights_sha256"] == rb["init_weights_sha256"],
                     "weights read back unchanged": all(x["readback_weights_sha256"] == x["init_weights_sha256"]
                                                       for x in (ra, rb)),
                     "same batch order (SHA-256)": ra["batch_order_sha256"] == rb["batch_order_sha256"],
                     # a run from before the masks were shared has none to compare: not a difference
                     "same dropout masks (SHA-256)": ra.get("dropout_masks_sha256", "n/a") ==
                     rb.get("dropout_masks_sha256", "n/a") if "dropout_masks_sha256" in ra else "n/a",
                     **{f"same {what}": ra[key] == rb[key] for what, key in RUN_SETTINGS.items()},
                     "initial logits max abs diff": diff, "logits agree (<= 1e-4)": diff <= 1e-4,
                     "steps to target (first seed)": steps_agreement(r, ca, cb),
                     "validation curves (first seed)": _curves(r, ca, cb)})
    return pd.DataFrame(rows)


def steps_agreement(r: Results, ca: Cell, cb: Cell) -> str:
    """The two cells' first seeds' steps to target and whether they agree to within one evaluation: the same maths
    (weights, batch order, dropout masks, optimizer) should need the same steps, up to rounding."""
    steps = [r.seeds[c].iloc[0]["steps_to_target"] if r.seeds[c].iloc[0]["reached"] else None for c in (ca, cb)]
    if None in steps:
        return "not both reached"
    cadence = int(r.run[ca].get("eval_every", 0))
    a, b = (int(s) for s in steps)
    return f"{a:,} vs {b:,}: " + ("the same" if a == b else f"within one evaluation ({cadence})"
                                  if abs(a - b) <= cadence else f"apart by {abs(a - b):,}")


def _curves(r: Results, ca: Cell, cb: Cell) -> str:
    got = curves(r, ca, cb)
    if got is None:
        return "n/a"
    if not got.evaluations or np.isnan(got.max_gap_se):
        return got.text
    return (f"{'agree' if got.agree else 'differ'}: largest gap {got.max_gap_se:.1f} SE (bound {got.bound_se:.1f}), "
            f"signed-rank p {got.p_signed_rank:.2f}, {got.evaluations} evaluations")


def class_balance(prepared: dict) -> str:
    """Training images per class, and a warning when the classes are strongly imbalanced (prepare's rule)."""
    if "class_counts" not in prepared:  # prepared before the counts were kept
        return ""
    counts, names = prepared["class_counts"], [str(c) for c in prepared["classes"]]
    text = "Training images per class: " + ", ".join(f"{n} {c:,}" for n, c in zip(names, counts)) + "."
    if counts.max() > IMBALANCE * counts.min():
        text += (f" **Strongly imbalanced** ({counts.min():,} to {counts.max():,}): accuracy says little about the "
                 "small classes; see each cell's per_class.tsv.")
    return text


def env_table(env: dict) -> pd.DataFrame:
    flat = {k: v for k, v in env.items() if not isinstance(v, (dict, list)) and v is not None}  # unset: no row
    for k, v in env.items():  # lists and maps on one line each: ISA extensions, caches, BLAS, GPUs
        if k not in ("versions", "thread_env") and isinstance(v, (dict, list)):
            flat[k] = ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else ", ".join(map(str, v))
    flat["gpus"] = flat.get("gpus") or "none"
    flat |= {f"version {k}": v for k, v in (env.get("versions") or {}).items()}
    return pd.DataFrame({"item": list(flat), "value": [str(v) for v in flat.values()]})


def _iqr_text(rec: dict) -> str:
    return f"{rec['samples_per_s']:,.0f} [{rec['samples_per_s_q1']:,.0f}–{rec['samples_per_s_q3']:,.0f}]"


def loaders_section(r: Results) -> tuple[pd.DataFrame, list[str]]:
    df = loader_rows(r)
    if df.empty:
        return df, []
    df["cell"] = [_iqr_text(x) for x in df.to_dict("records")]
    table = df.pivot_table(index=["framework", "workers"], columns="what", values="cell", aggfunc="first",
                           sort=False).reset_index()
    verdicts = []
    for (fw, what), sub in df.groupby(["framework", "what"], sort=False):
        best = sub.loc[sub.samples_per_s.idxmax()].to_dict()
        zero = sub[sub.workers == "0"]
        if best["workers"] == "0" or zero.empty:
            verdicts.append(f"**{shown(fw)} {what}**: fastest with workers={best['workers']} "
                            f"({best['samples_per_s']:,.0f} samples/s): extra workers did not help here")
        else:
            z = zero.iloc[0].to_dict()
            overlap = best["samples_per_s_q1"] <= z["samples_per_s_q3"]
            verdicts.append(f"**{shown(fw)} {what}**: fastest with workers={best['workers']}, "
                            f"{best['samples_per_s'] / z['samples_per_s']:.2f}x of workers=0 "
                            f"({best['samples_per_s']:,.0f} vs {z['samples_per_s']:,.0f} samples/s; repeats "
                            f"{'overlap' if overlap else 'do not overlap'} within one process, a diagnostic)")
    return table, verdicts


def build(r: Results, params_text: str, prepared: dict, figdir: Path) -> list[render.Block]:
    meta = prepared_meta(prepared)
    B: list[render.Block] = [("h1", f"mnist-bench report — dataset `{meta['dataset']}`"), (
        "p", "Every number below comes from a file a stage wrote (see results.csv). A difference is called a "
             "difference only when it is beyond the noise: speed claims need the confidence interval of the median "
             "per-round ratio between fresh, interleaved processes to exclude 1 (see Speed); accuracy claims need "
             f"p < {verdict.ALPHA} in a paired t-test over seeds (or, with one seed, McNemar's test says only that "
             "the two trained models differ). Otherwise: no clear difference.")]
    B[1:1] = headline(r)  # the verdicts a reader came for, before how they were reached
    B += time_to_target_blocks(r, figdir)
    acc = pd.DataFrame([{"framework": shown(c.framework), "model": c.model,
                         "test accuracy %": f"{100 * m.test_acc:.2f} ± {100 * m.test_acc_std:.2f}",
                         "seeds": m.seeds, "params": m.params,
                         "epochs trained (cap)": f"{m.epochs_trained:.2f} ({m.epochs})",
                         "train time s": m.train_time_s, "train samples/s": m.train_samples_per_s}
                        for c, m in r.train.items()])
    untrained = r.lacks(*(f"train@{c}" for c in r.cells()))
    B += [("h2", "Accuracy"), ("p", f"Test set: {meta['sizes']['test']} images; mean ± std over seeds. "
                                    + class_balance(prepared)),
          render.table_or(acc, f"No cell left its results: {untrained}.")] + [("p", v) for v in accuracy_verdicts(r)]
    curves = history_rows(r)
    B.append(("img", figures.learning_curves(curves, figdir / "learning_curves.png"),
              "Learning curves (first seed), both frameworks overlaid") if curves["val_acc"].notna().any() else
             ("p", "No learning curves: no cell left an evaluation with a finite loss."))
    B.append(("img", figures.confusions(r.confusion, figdir / "confusion.png"), "Confusion matrices (first seed)")
             if r.confusion else ("p", "No confusion matrices: no cell left its results."))
    cnn_or_first = [m for m in r.models if m == "cnn"] or r.models
    model = cnn_or_first[0]
    preds = {short(c.framework): r.preds[c]["y_pred"] for c in r.trained() if c.model == model}
    B.append(("img", figures.samples(prepared["x_test"], prepared["y_test"], preds, list(prepared["classes"]),
                                     figdir / "samples.png"),
              f"Test images with true label and each framework's {model} prediction; red: a framework is wrong")
             if preds else ("p", f"No test images with predictions: no {model} cell left its results."))
    B += speed.speed_blocks(r, figdir) + sweeps.variant_blocks(r) + sweeps.thread_blocks(r, figdir)
    table, verdicts = loaders_section(r)
    unloaded = r.lacks(*(f"loaders@{fw}" for fw in r.frameworks))
    B += [("h2", "Data loading: num_workers / num_parallel_calls"),
          ("p", "Per-sample pipeline (uint8 → float, normalise, random shift) through each framework's own "
                f"loader ({'; '.join(f'{about(fw).label}: {about(fw).loader}' for fw in r.frameworks)}); samples/s "
                "median [IQR]. `loader`: the loader alone; `train-*`: training fed by it." + (f" Missing here: {unloaded}." if unloaded and len(table) else "")),
          render.table_or(table, f"Not measured: {unloaded}.")] + [("p", v) for v in verdicts]
    if len(table):
        B.append(("img", figures.loaders(loader_rows(r), figdir / "loaders.png"), "samples/s against workers"))
    B += scaling.blocks(r, figdir)
    eq = equivalence(r)
    if len(eq):
        B += [("h2", "Equivalence evidence"),
              ("p", "Both cells of a model start from the same NumPy-drawn weights and batch order, on the same "
                    "device, precision and thread count as each framework read them back; their initial logits on "
                    "the same validation images must agree."), ("table", eq)]
    return B + [("h2", "Environment"), ("table", env_table(r.env)), ("h2", "Parameters of this run"),
                ("pre", params_text)]
