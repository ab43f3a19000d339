"""Seaborn figures for the report. Each function takes tidy DataFrames and writes one PNG atomically."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline.files import atomic_path  # noqa: E402

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


def throughput(rows: pd.DataFrame, path: Path) -> Path:
    """Median samples/s per variant with interquartile error bars; train and inference side by side."""
    rows = rows.copy()
    rows["cell"] = rows["framework"] + "·" + rows["variant"]
    rows["panel"] = rows["phase"] + " bs=" + rows["batch_size"].astype(str)
    panels = list(dict.fromkeys(rows["panel"]))
    models = list(dict.fromkeys(rows["model"]))
    fig, axes = plt.subplots(len(models), len(panels), figsize=(4.2 * len(panels), 3.2 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        for j, panel in enumerate(panels):
            ax, sub = axes[i][j], rows[(rows["model"] == model) & (rows["panel"] == panel)]
            colors = sns.color_palette(n_colors=len(sub))
            err = [sub["samples_per_s"] - sub["samples_per_s_q1"], sub["samples_per_s_q3"] - sub["samples_per_s"]]
            ax.barh(sub["cell"], sub["samples_per_s"], color=colors, xerr=err, capsize=3)
            ax.set_title(f"{model} · {panel}")
            ax.set_xlabel("samples/s (median, IQR bars)")
    fig.tight_layout()
    return _save(fig, path)


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
    rows = rows.assign(series=rows["framework"] + " " + rows["phase"].str.replace("threads-", "") + " bs="
                       + rows["batch_size"].astype(str))
    g = sns.relplot(data=rows, x="threads", y="samples_per_s", hue="series", col="model", kind="line",
                    marker="o", height=3.2, aspect=1.2, facet_kws={"sharey": False})
    g.set_axis_labels("intra-op threads", "samples/s (median)")
    return _save(g.figure, path)


def confusions(mats: dict[str, pd.DataFrame], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.8), squeeze=False)
    for ax, (cell, m) in zip(axes[0], mats.items()):
        sns.heatmap(m, ax=ax, cmap="Blues", cbar=False, annot=m.shape[0] <= 10, fmt="d", annot_kws={"size": 7})
        ax.set(title=cell, xlabel="predicted", ylabel="true")
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
