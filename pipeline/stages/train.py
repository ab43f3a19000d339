"""Stage `train@<framework>-<model>`: train one cell over `train.repeats` seeds (pipeline/runs.py); write the
model, curves, tables and predictions, then metrics.json last, so a failed stage never leaves a headline."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from pipeline import backends, files, params, runs
from pipeline.data import load_prepared, normalise, prepared_meta

log = logging.getLogger("train")
SEED_COLUMNS = ("seed", "test_acc", "test_loss", "val_acc", "reached", "time_to_target_s", "steps_to_target",
                "epochs_to_target", "best_val_acc", "train_time_s", "wall_time_s", "train_samples_per_s")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", required=True, choices=params.FRAMEWORKS)
    ap.add_argument("--model", required=True, choices=params.MODELS)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--out", type=Path, required=True, help="directory for metrics, curves, predictions")
    ap.add_argument("--model-out", type=Path, required=True, help="directory for the saved model")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    meta = prepared_meta(raw)
    spec = params.model_spec(p, a.model, tuple(meta["image_shape"]), len(raw["classes"]))
    be = backends.load(a.framework)
    setup = be.setup(p.threads, p.device, p.seed)
    d = {k: normalise(raw[k], raw["mean"], raw["std"]) if k.startswith("x_") else raw[k] for k in raw}
    optim, epochs = params.optim(p, a.model), getattr(p.schedule, a.model).epochs
    cell = f"{a.framework}-{a.model}"
    target = getattr(p.target.of(meta["dataset"]), a.model)
    seeds = [runs.run_seed(be, spec, optim, d, p.train, epochs, target, p.seed + r, f"{cell} seed {p.seed + r}")
             for r in range(p.train.repeats)]
    names = [str(c) for c in raw["classes"]]
    metrics, per_class = runs.summarise(seeds, raw["y_test"], len(names))
    metrics |= {"params": spec.param_count(), "flops_per_sample": spec.flops_per_sample(), "epochs": epochs}
    ev, init_logits = runs.evidence(be, spec, d, p.seed, epochs)
    first, out = seeds[0], a.out
    y_true, y_pred = raw["y_test"], first["logits"].argmax(1)
    with files.atomic_path(a.model_out / f"model{be.MODEL_SUFFIX}") as tmp:
        be.save(first["model"], tmp)
    with files.atomic_path(out / "predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, y_true=y_true, y_pred=y_pred, logits=first["logits"].astype(np.float32),
                            init_logits=init_logits.astype(np.float32))
    for path, df in (
        (out / "history.tsv", pd.DataFrame(first["history"])),
        (out / "seeds.tsv", pd.DataFrame([{k: r[k] for k in SEED_COLUMNS} for r in seeds])),
        (out / "per_class.tsv", pd.DataFrame({"class": names, **per_class})),
        (out / "confusion.tsv", pd.DataFrame(confusion_matrix(y_true, y_pred, labels=np.arange(len(names))),
                                             index=names, columns=names).rename_axis("true")),
    ):
        with files.atomic_path(path) as tmp:
            df.to_csv(tmp, sep="\t", index=path.name == "confusion.tsv", float_format="%.6g")
    files.write_json(out / "run.json", {"framework": a.framework, "model": a.model, "dataset": meta["dataset"],
                                        **setup, "optimizer": optim.__dict__, "batch_size": p.train.batch_size,
                                        **ev})
    files.write_json(out / "metrics.json", metrics)  # last: its presence means every other output is there
    log.info("%s: target %.4f %s; test accuracy %.4f (%d seed%s), %.0f samples/s", cell, target,
             f"reached in {metrics['time_to_target_s']:.1f} s (median)" if metrics["reached_seeds"] else "not reached",
             metrics["test_acc"], len(seeds), "s" * (len(seeds) > 1), metrics["train_samples_per_s"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
