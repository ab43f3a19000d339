"""Stage `train@<framework>-<model>`: one train cell (train/cell.py) and its files.

Stage `train@<framework>-<model>`: train one cell over `train.repeats` seeds (pipeline/train/cell.py); write the
model, curves, tables and predictions, then metrics.json last, so a failed stage never leaves a headline.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import backends, files, params, spec
from pipeline.data.prepare import load_prepared, normalise, prepared_meta
from pipeline.backends.base import check_precision
from pipeline.records import Cell
from pipeline.train.cell import train_cell

log = logging.getLogger("train")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", required=True, choices=backends.FRAMEWORKS)
    ap.add_argument("--model", required=True, choices=spec.MODELS)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--out", type=Path, required=True, help="directory for metrics, curves, predictions")
    ap.add_argument("--model-out", type=Path, required=True, help="directory for the saved model")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    meta = prepared_meta(raw)
    net = params.model_spec(p, a.model, tuple(meta["image_shape"]), len(raw["classes"]))
    be = backends.create(a.framework, p.threads, p.device, p.seed, p.precision)
    check_precision(be.info, p.precision)  # run.json records be.info: the precision it really trained at
    d = {k: normalise(raw[k], raw["mean"], raw["std"]) if k.startswith("x_") else raw[k] for k in raw}
    optim, epochs = params.optim(p, a.model), getattr(p.schedule, a.model).epochs
    target = getattr(p.target.of(meta["dataset"]), a.model)
    cell = Cell(a.framework, a.model)
    t = train_cell(be, net, optim, d, p.train, epochs, target, p.seed, [str(c) for c in raw["classes"]], str(cell))
    out = a.out
    with files.atomic_path(a.model_out / f"model{be.MODEL_SUFFIX}") as tmp:
        be.save(t.model, tmp)
    with files.atomic_path(out / "predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, y_true=raw["y_test"], y_pred=t.logits.argmax(1), logits=t.logits.astype(np.float32),
                            init_logits=t.init_logits.astype(np.float32))
    pairs = pd.DataFrame({"actual": np.asarray(raw["classes"])[raw["y_test"]],  # long form: DVC's confusion plot
                          "predicted": np.asarray(raw["classes"])[t.logits.argmax(1)]})
    for path, df in ((out / "confusion_pairs.tsv", pairs), (out / "history.tsv", t.history), (out / "seeds.tsv", pd.DataFrame(map(asdict, t.seeds))),
                     (out / "per_class.tsv", t.per_class), (out / "confusion.tsv", t.confusion)):
        with files.atomic_path(path) as tmp:
            df.to_csv(tmp, sep="\t", index=path.name == "confusion.tsv", float_format="%.6g")
    files.write_json(out / "run.json", {"framework": a.framework, "model": a.model, "dataset": meta["dataset"],
                                        **be.info, "optimizer": asdict(optim), "batch_size": p.train.batch_size,
                                        "eval_every": p.train.eval_steps(),
                                        "eval_every_samples": p.train.eval_every_samples,
                                        **t.evidence})
    files.write_json(out / "metrics.json", asdict(t.metrics))  # last: its presence means every other output is there
    m = t.metrics
    log.info("%s: target %.4f %s; test accuracy %.4f (%d seed%s), %.0f samples/s", cell, target,
             f"reached in {m.time_to_target_s:.1f} s (median)" if m.reached_seeds else
             f"diverged in {m.diverged_seeds} seed(s)" if m.diverged_seeds else "not reached",
             m.test_acc, m.seeds, "s" * (m.seeds > 1), m.train_samples_per_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
