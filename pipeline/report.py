"""The report as blocks (headings, prose, tables, figures) that render.py turns into Markdown and HTML.

Every verdict goes through compare.py's noise-aware wording; every number comes from results.collect().
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import compare, figures, render
from pipeline.data import prepared_meta
from pipeline.results import LABEL, SHORT, Results, bench_rows, history_rows, loader_rows


def iqr(rec: dict) -> dict:
    return {"median": rec["samples_per_s"], "q1": rec["samples_per_s_q1"], "q3": rec["samples_per_s_q3"]}


def pairs(r: Results) -> list[tuple[str, str, str]]:
    """(model, cell A, cell B) for every model run in both frameworks: what the verdicts compare."""
    if len(r.frameworks) < 2:
        return []
    a, b = r.frameworks[:2]
    return [(m, f"{a}-{m}", f"{b}-{m}") for m in r.models]


def accuracy_verdicts(r: Results) -> list[str]:
    out = []
    for model, ca, cb in pairs(r):
        ya = r.preds[ca]["y_true"]
        p = compare.mcnemar_p(r.preds[ca]["y_pred"] == ya, r.preds[cb]["y_pred"] == ya)
        out.append(f"**{model}**: " + compare.accuracy(LABEL[ca.split('-')[0]], list(r.seeds[ca]["test_acc"]),
                                                      LABEL[cb.split('-')[0]], list(r.seeds[cb]["test_acc"]), p))
    return out


def speed_verdicts(r: Results) -> list[str]:
    df, out = bench_rows(r), []
    for model, ca, cb in pairs(r):
        for phase in ("train", "infer"):
            recs = []
            for c in (ca, cb):
                sub = df[(df.framework == c.split("-")[0]) & (df.model == model) & (df.phase == phase)
                         & (df.variant == r.bench[c]["default_variant"]) & (df.status == "ok")]
                recs.append(sub.sort_values("batch_size").iloc[-1].to_dict() if len(sub) else None)
            if None not in recs:
                out.append(f"**{model} {phase}** (default variants, batch {int(recs[0]['batch_size'])}): "
                           + compare.speed(LABEL[ca.split('-')[0]], iqr(recs[0]), LABEL[cb.split('-')[0]],
                                           iqr(recs[1])))
    return out


def equivalence(r: Results) -> pd.DataFrame:
    rows = []
    for model, ca, cb in pairs(r):
        ra, rb = r.run[ca], r.run[cb]
        diff = float(np.abs(r.preds[ca]["init_logits"] - r.preds[cb]["init_logits"]).max())
        rows.append({"model": model,
                     "same parameter counts (per layer)": ra["layer_param_counts"] == rb["layer_param_counts"],
                     "same initial weights (SHA-256)": ra["init_weights_sha256"] == rb["init_weights_sha256"],
                     "weights read back unchanged": all(x["readback_weights_sha256"] == x["init_weights_sha256"]
                                                       for x in (ra, rb)),
                     "same batch order (SHA-256)": ra["batch_order_sha256"] == rb["batch_order_sha256"],
                     "initial logits max abs diff": diff, "logits agree (<= 1e-4)": diff <= 1e-4})
    return pd.DataFrame(rows)


def env_table(env: dict) -> pd.DataFrame:
    flat = {k: v for k, v in env.items() if not isinstance(v, (dict, list))}
    flat["gpus"] = ", ".join(env.get("gpus") or []) or "none"
    flat |= {f"version {k}": v for k, v in (env.get("versions") or {}).items()}
    return pd.DataFrame({"item": list(flat), "value": [str(v) for v in flat.values()]})


def _iqr_text(rec: dict) -> str:
    return f"{rec['samples_per_s']:,.0f} [{rec['samples_per_s_q1']:,.0f}–{rec['samples_per_s_q3']:,.0f}]"


def speed_table(df: pd.DataFrame, r: Results) -> pd.DataFrame:
    rows = []
    for cell, b in r.bench.items():
        fw, model = cell.split("-")
        rows.append({"framework": LABEL[fw], "model": model, "variant": b["default_variant"],
                     "train samples/s": b.get("train_samples_per_s"), "train IQR": b.get("train_samples_per_s_iqr"),
                     "train CV %": b.get("train_cv_pct"), "train % peak": b.get("train_pct_of_peak"),
                     "infer samples/s": b.get("infer_samples_per_s"), "infer % peak": b.get("infer_pct_of_peak"),
                     "latency p50/p95/p99 ms": "/".join(f"{b[k]:.3g}" for k in ("latency_ms_p50", "latency_ms_p95",
                                                                                 "latency_ms_p99") if k in b),
                     "matmul GFLOP/s": b.get("matmul_gflops"), "peak RSS MB": b.get("peak_rss_mb")})
    return pd.DataFrame(rows)


def compile_section(df: pd.DataFrame, r: Results) -> tuple[pd.DataFrame, list[str]]:
    rows, verdicts = [], []
    for cell, b in r.bench.items():
        fw, model = cell.split("-")
        sub = df[(df.framework == fw) & (df.model == model) & df.phase.isin(["train", "infer"])]
        default = {(x.phase, x.batch_size): x._asdict() for x in sub[(sub.variant == b["default_variant"])
                                                                    & (sub.status == "ok")].itertuples()}
        for rec in sub.to_dict("records"):
            base = default.get((rec["phase"], rec["batch_size"]))
            ok = rec["status"] == "ok"
            rows.append({"framework": LABEL[fw], "model": model, "variant": rec["variant"], "phase": rec["phase"],
                         "batch": rec["batch_size"], "samples/s [IQR]": _iqr_text(rec) if ok else "unsupported",
                         "vs default": rec["samples_per_s"] / base["samples_per_s"] if ok and base else np.nan,
                         "note": "" if ok else rec.get("reason", "")})
            if ok and base and rec["variant"] != b["default_variant"] and rec["phase"] == "train":
                verdicts.append(f"**{LABEL[fw]} {model} train**, {rec['variant']} vs {b['default_variant']}: "
                                + compare.speed(rec["variant"], iqr(rec), b["default_variant"], iqr(base)))
    return pd.DataFrame(rows), verdicts


def loaders_section(r: Results) -> tuple[pd.DataFrame, list[str]]:
    df = loader_rows(r)
    df["cell"] = [_iqr_text(x) for x in df.to_dict("records")]
    table = df.pivot_table(index=["framework", "workers"], columns="what", values="cell", aggfunc="first",
                           sort=False).reset_index()
    verdicts = []
    for (fw, what), sub in df.groupby(["framework", "what"], sort=False):
        best = sub.loc[sub.samples_per_s.idxmax()].to_dict()
        zero = sub[sub.workers == "0"]
        if best["workers"] == "0" or zero.empty:
            verdicts.append(f"**{LABEL[fw]} {what}**: best with workers={best['workers']} "
                            f"({best['samples_per_s']:,.0f} samples/s): extra workers do not help here")
        else:
            z = zero.iloc[0].to_dict()
            verdicts.append(f"**{LABEL[fw]} {what}**: best workers={best['workers']}, "
                            f"{best['samples_per_s'] / z['samples_per_s']:.2f}x of workers=0: "
                            + compare.speed(f"workers={best['workers']}", iqr(best), "workers=0", iqr(z)))
    return table, verdicts


def build(r: Results, params_text: str, prepared: dict, figdir: Path) -> list[render.Block]:
    df = bench_rows(r)
    meta = prepared_meta(prepared)
    B: list[render.Block] = [("h1", f"mnist-bench report — dataset `{meta['dataset']}`"), (
        "p", "Every number below comes from a file a stage wrote (see results.csv). A difference is called a "
             "difference only when it is beyond the noise: speed claims need non-overlapping interquartile ranges "
             f"over repeats; accuracy claims need p < {compare.ALPHA} in an exact McNemar test on the same test "
             "images (and in Welch's t-test over seeds when there are several). Otherwise: no clear difference.")]
    B += [("h2", "Environment"), ("table", env_table(r.env))]
    acc = pd.DataFrame([{"framework": LABEL[c.split("-")[0]], "model": c.split("-")[1],
                         "test accuracy %": f"{100 * m['test_acc']:.2f} ± {100 * m['test_acc_std']:.2f}",
                         "seeds": m.get("seeds", 1), "params": m["params"], "epochs": m["epochs"],
                         "train time s": m["train_time_s"], "train samples/s": m["train_samples_per_s"]}
                        for c, m in r.train.items()])
    B += [("h2", "Accuracy"), ("p", f"Test set: {meta['sizes']['test']} images; mean ± std over seeds."),
          ("table", acc)] + [("p", v) for v in accuracy_verdicts(r)]
    B.append(("img", figures.learning_curves(history_rows(r), figdir / "learning_curves.png"),
              "Learning curves (first seed), both frameworks overlaid"))
    B.append(("img", figures.confusions(r.confusion, figdir / "confusion.png"), "Confusion matrices (first seed)"))
    cnn_or_first = [m for m in r.models if m == "cnn"] or r.models
    model = cnn_or_first[0]
    preds = {SHORT[f]: r.preds[f"{f}-{model}"]["y_pred"] for f in r.frameworks}
    B.append(("img", figures.samples(prepared["x_test"], prepared["y_test"], preds, list(prepared["classes"]),
                                     figdir / "samples.png"),
              f"Test images with true label and each framework's {model} prediction; red: a framework is wrong"))
    B += [("h2", "Speed"), ("p", "Default variants at the params' thread count. Throughput: median over repeats, "
                                 "IQR = interquartile range, CV = coefficient of variation. % peak: share of the fp32 "
                                 "matmul rate measured in the same process (training counted as 3x forward FLOPs); "
                                 "it can pass 100% where conv kernels beat the measured GEMM rate."),
          ("table", speed_table(df, r))] + [("p", v) for v in speed_verdicts(r)]
    ok = df[df.phase.isin(["train", "infer"]) & (df.status == "ok")]
    B.append(("img", figures.throughput(ok, figdir / "throughput.png"), "Throughput per variant, IQR error bars"))
    table, verdicts = compile_section(df, r)
    described = {k: v for b in r.bench.values() for k, v in b.get("variants", {}).items()}
    B += [("h2", "Compilation"), ("p", "; ".join(f"`{k}`: {v}" for k, v in described.items())), ("table", table)]
    B += [("p", v) for v in verdicts]
    th = df[df.phase.str.startswith("threads-") & (df.status == "ok")]
    if len(th):
        scaling = th.pivot_table(index=["framework", "model", "phase", "batch_size"], columns="threads",
                                 values="samples_per_s").reset_index()
        B += [("h2", "Thread scaling"), ("p", "samples/s (median) per intra-op thread count, one process each."),
              ("table", scaling),
              ("img", figures.threads(th, figdir / "threads.png"), "samples/s against intra-op threads")]
    table, verdicts = loaders_section(r)
    B += [("h2", "Data loading: num_workers / num_parallel_calls"),
          ("p", "Per-sample pipeline (uint8 → float, normalise, random shift) through torch DataLoader or "
                "tf.data; samples/s median [IQR]. `loader`: the loader alone; `train-*`: training fed by it."),
          ("table", table)] + [("p", v) for v in verdicts]
    B.append(("img", figures.loaders(loader_rows(r), figdir / "loaders.png"), "samples/s against workers"))
    eq = equivalence(r)
    if len(eq):
        B += [("h2", "Equivalence evidence"),
              ("p", "Both cells of a model start from the same NumPy-drawn weights and batch order; their initial "
                    "logits on the same validation images must agree."), ("table", eq)]
    return B + [("h2", "Parameters of this run"), ("pre", params_text)]
