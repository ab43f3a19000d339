"""Seaborn figures for the report, each written atomically as one PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline.files import atomic_path  # noqa: E402
from pipeline.measure.verdict import Verdict  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def learning_curves(history: pd.DataFrame, path: Path) -> Path:
    """Accuracy and loss per epoch, train and validation, both frameworks overlaid, one row per model."""
    long = history.melt(id_vars=["framework", "model", "epoch"],
                        value_vars=["train_acc", "val_acc", "train_loss", "val_loss"], var_name="series")
    long["split"] = long["series"].str.split("_").str[0]
    long["quantity"] = long["series"].str.split("_").str[1].map({"acc": "accuracy", "loss": "loss"})
    g = sns.relplot(data=long, x="epoch", y="value", hue="framework", style="split", row="model",
                    col="quantity", kind="line", markers=True, dashes=True, height=3, aspect=1.5,
                    facet_kws={"sharey": False})
    g.set_titles("{row_name} · {col_name}")
    return _save(g.figure, path)


def rounds(verdicts: list[Verdict], rows: pd.DataFrame, flagged: list[dict], path: Path) -> Path:
    """Left: every comparison's per-round ratios, median and interval, on a log axis around 1 (no difference).
    Right: the calibration GEMM before/after each child in run order, flagged children in red."""
    fig, (ax, cal) = plt.subplots(1, 2, figsize=(12, 0.55 * len(verdicts) + 2.2),
                                  gridspec_kw={"width_ratios": [3, 2]})
    labels = []
    for i, v in enumerate(verdicts):
        y = len(verdicts) - 1 - i
        color = "grey" if v.control else ("tab:green" if v.winner else "tab:blue")
        ax.scatter(v.ratios, [y] * len(v.ratios), s=14, color=color, alpha=0.6, zorder=3)
        if np.isfinite(v.ci_low):  # NaN: too few clean rounds for an interval
            ax.plot([v.ci_low, v.ci_high], [y, y], color=color, linewidth=4, alpha=0.35)
        if np.isfinite(v.ratio):
            ax.scatter([v.ratio], [y], marker="|", s=300, color=color, zorder=4)
        labels.append(f"{v.model} {v.phase}: {v.a}/{v.b}" + (" (control)" if v.control else ""))
    ax.set_yticks(range(len(verdicts)), labels[::-1])
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))  # 0.5, 1, 2 rather than 5x10^-1
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("rate ratio per round (log scale; 1 = same speed)")
    order = rows[rows["kind"] == "round"].drop_duplicates(["round", "arm"]).reset_index(drop=True)
    bad = {(f["round"], f["arm"]) for f in flagged}
    for k, (before, after, rd, arm) in enumerate(order[["calib_before_gflops", "calib_after_gflops", "round",
                                                        "arm"]].itertuples(index=False)):
        c = "crimson" if (rd, arm) in bad else "tab:blue"
        cal.plot([k - 0.3, k + 0.3], [before, after], color=c, marker="o", markersize=3)
    cal.set(xlabel="round child, in run order", ylabel="calibration GEMM GFLOP/s (before → after)")
    fig.tight_layout()
    return _save(fig, path)


def time_to_target(history: pd.DataFrame, targets: dict[str, float], path: Path) -> Path:
    """Validation accuracy against training seconds (evaluation excluded), frameworks overlaid, target dashed."""
    g = sns.relplot(data=history, x="train_s", y="val_acc", hue="framework", col="model", kind="line", marker="o",
                    height=3.4, aspect=1.3, facet_kws={"sharex": False, "sharey": False})
    for model, ax in g.axes_dict.items():
        ax.axhline(targets[model], color="black", linestyle="--", linewidth=1, label="target")
        low = history.loc[history["model"] == model, "val_acc"].min()
        ax.set_ylim(max(low, targets[model] - 0.1), 1.0)
    g.set_axis_labels("training time, s (evaluation excluded)", "validation accuracy")
    return _save(g.figure, path)


def loaders(rows: pd.DataFrame, path: Path) -> Path:
    """samples/s against workers (num_workers / num_parallel_calls), per framework, loader alone and training."""
    rows = rows.copy()
    g = sns.FacetGrid(rows, col="what", hue="framework", sharey=False, height=3.2, aspect=1.2)
    g.map_dataframe(lambda data, color, **kw: plt.errorbar(
        data["workers"], data["samples_per_s"], color=color, marker="o", capsize=3, label=data["framework"].iloc[0],
        yerr=[data["samples_per_s"] - data["samples_per_s_q1"], data["samples_per_s_q3"] - data["samples_per_s"]]))
    g.set_axis_labels("workers", "samples/s (median, IQR bars)")
    g.add_legend()
    return _save(g.figure, path)


def threads(rows: pd.DataFrame, path: Path) -> Path:
    """Training samples/s against intra-op threads, one line per framework, one panel per model."""
    g = sns.relplot(data=rows, x="threads", y="train_samples_per_s", hue="framework", col="model", kind="line",
                    marker="o", height=3.2, aspect=1.2, facet_kws={"sharey": False})
    g.set_axis_labels("intra-op threads", "training samples/s")
    for ax in g.axes.flat:  # thread counts are whole numbers: no 1.25-thread ticks
        ax.set_xticks(sorted(rows["threads"].unique()))
    return _save(g.figure, path)


def settings(rows: pd.DataFrame, key: str, path: Path) -> Path:
    """Training samples/s (median over usable rounds, IQR bars) against the varied setting, a line per framework,
    a panel per model: the interleaved arms of bench.vary."""
    g = rows.groupby(["model", "framework", "value"])["train_samples_per_s"]
    stats = pd.DataFrame({"median": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75)}).reset_index()
    models, frameworks = list(dict.fromkeys(rows["model"])), list(dict.fromkeys(rows["framework"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for fw in frameworks:  # the run's order, so each framework keeps its colour across figures
            d = stats[(stats["model"] == model) & (stats["framework"] == fw)].sort_values("value")
            ax.errorbar(d["value"], d["median"], yerr=[d["median"] - d["q1"], d["q3"] - d["median"]], capsize=3,
                        marker="o", label=fw)
        ax.set(title=model, xlabel=key, ylabel="training samples/s", xscale="log" if key != "threads" else "linear")
        ax.set_xticks(sorted(stats["value"].unique()), [str(int(v)) for v in sorted(stats["value"].unique())])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def scaling(table: pd.DataFrame, path: Path, shared: bool = False) -> Path:
    """Per model: training samples/s (median, IQR bars) and efficiency against worker processes, a line per
    framework; the efficiency panel marks 1 (perfect scaling) and, when the workers share one CPU (`shared`), 1/N:
    no speed-up at all, the most that sharing the same cores allows."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(4.4 * len(models), 6), squeeze=False, sharex=True)
    for col, model in enumerate(models):
        for fw, d in table[table["model"] == model].groupby("framework", sort=False):
            d = d.sort_values("workers")
            axes[0][col].errorbar(d["workers"], d["samples_per_s"], capsize=3, marker="o", label=fw,
                                  yerr=[d["samples_per_s"] - d["samples_per_s_q1"],
                                        d["samples_per_s_q3"] - d["samples_per_s"]])
            axes[1][col].plot(d["workers"], d["efficiency"], marker="o", label=fw)
        axes[0][col].set(title=model, ylabel="training samples/s")
        axes[1][col].axhline(1.0, color="black", linewidth=1, label="perfect scaling")
        if shared:
            ns = np.array(sorted(table["workers"].unique()), dtype=float)
            axes[1][col].plot(ns, 1 / ns, color="grey", linestyle="--", label="1/N: shared cores, no speed-up")
        axes[1][col].set(xlabel="worker processes", ylabel="efficiency", ylim=(0, 1.1))
        axes[1][col].set_xticks(sorted(table["workers"].unique()))
    axes[0][-1].legend(fontsize=8)
    axes[1][-1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def confusions(mats: dict[str, pd.DataFrame], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.8), squeeze=False)
    for ax, (cell, m) in zip(axes[0], mats.items()):
        sns.heatmap(m, ax=ax, cmap="Blues", cbar=False, annot=m.shape[0] <= 10, fmt="d", annot_kws={"size": 7})
        ax.set(title=str(cell), xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return _save(fig, path)


def samples(images: np.ndarray, y_true: np.ndarray, preds: dict[str, np.ndarray], classes: list[str], path: Path,
            n: int = 32) -> Path:
    """Test images with the true label and each framework's prediction; red where any framework is wrong."""
    wrong = list(np.flatnonzero(np.any([p != y_true for p in preds.values()], axis=0))[: n // 4])
    pick = sorted(wrong + [i for i in range(len(y_true)) if i not in wrong][: n - len(wrong)])
    cols = 8
    fig, axes = plt.subplots(-(-len(pick) // cols), cols, figsize=(cols * 1.5, 1.9 * -(-len(pick) // cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick):
        ax.imshow(images[i], cmap="gray_r")
        bad = any(p[i] != y_true[i] for p in preds.values())
        label = "\n".join([f"true {classes[y_true[i]]}"] + [f"{k} {classes[p[i]]}" for k, p in preds.items()])
        ax.set_title(label, fontsize=7, color="crimson" if bad else "black")
        if bad:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set(visible=True, color="crimson", linewidth=2)
    fig.tight_layout()
    return _save(fig, path)


def against(rows: pd.DataFrame, x: str, numeric: bool, label: str, path: Path) -> Path:
    """One metric across experiments: against the varied param (or the experiment), a line per framework, a panel
    per model, bars from each experiment's own spread, a marker per machine."""
    rows = rows.assign(model=rows["model"].fillna("all"), low=rows["low"].fillna(rows["value"]),
                       high=rows["high"].fillna(rows["value"]))
    if numeric:
        rows[x] = rows[x].astype(float)
    models = list(dict.fromkeys(rows["model"]))
    markers = dict(zip(dict.fromkeys(rows["machine"]), "osD^v<>p*"))
    colors = dict(zip(dict.fromkeys(rows["framework"]), sns.color_palette()))
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for (fw, machine), d in rows[rows["model"] == model].groupby(["framework", "machine"], sort=False):
            d = d.sort_values(x) if numeric else d
            name = fw if len(markers) == 1 else f"{fw} · {machine.split(' (')[0]}"
            ax.errorbar(d[x], d["value"], yerr=[d["value"] - d["low"], d["high"] - d["value"]], color=colors[fw],
                        marker=markers[machine], capsize=3, label=name)
        ax.set(title=model, xlabel=x, ylabel=label)
        if numeric:
            ax.set_xticks(sorted(rows[x].unique()))
        else:
            ax.tick_params(axis="x", labelrotation=30)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
