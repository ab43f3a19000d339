"""Stage `train@<framework>-<model>`: train one cell over `train.repeats` seeds; metrics, curves, model."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline import backends, files, params, spec as specs
from pipeline.data import load_prepared, normalise, prepared_meta
from pipeline.loop import evaluate, predict, train

log = logging.getLogger("train")
EVIDENCE_SAMPLES = 256  # validation images whose initial logits are kept to compare the frameworks


def run_seed(be: ModuleType, spec: specs.ModelSpec, optim: specs.Optim, d: dict, tp: params.Train, epochs: int,
             seed: int, desc: str) -> dict:
    """Train from the seed's initial weights; return history, test metrics and the trained model."""
    be.reseed(seed)
    model = be.build(spec, specs.init_weights(spec, seed))
    tr, va, te = (be.put(d[f"x_{s}"], d[f"y_{s}"]) for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    history = train(be, model, optim, tr, va, d["y_val"], epochs, tp.batch_size, tp.eval_batch_size, seed,
                    desc=desc)
    wall = time.perf_counter() - t0
    test_loss, test_acc, logits = evaluate(be, be.make_predict(model, be.DEFAULT), te, d["y_test"],
                                           tp.eval_batch_size)
    train_s = sum(h["train_s"] for h in history)
    return {"seed": seed, "history": history, "model": model, "logits": logits, "test_acc": test_acc,
            "test_loss": test_loss, "val_acc": history[-1]["val_acc"], "train_time_s": train_s,
            "wall_time_s": wall, "train_samples_per_s": epochs * len(d["y_train"]) / train_s}


def evidence(be: ModuleType, spec: specs.ModelSpec, d: dict, seed: int, epochs: int) -> tuple[dict, np.ndarray]:
    """What the report needs to show the cells did the same work: weight/order digests, initial logits."""
    w0 = specs.init_weights(spec, seed)
    x = d["x_val"][:EVIDENCE_SAMPLES]
    model = be.build(spec, w0)
    logits = predict(be, be.make_predict(model, be.DEFAULT), be.put(x, d["y_val"][:EVIDENCE_SAMPLES]),
                     EVIDENCE_SAMPLES)
    n = len(d["y_train"])
    return {"param_count": spec.param_count(), "layer_param_counts": spec.layer_param_counts(),
            "init_weights_sha256": specs.digest(w0),
            "batch_order_sha256": specs.digest([specs.batch_order(n, seed, e) for e in range(epochs)]),
            "readback_weights_sha256": specs.digest(be.get_weights(model, spec))}, logits


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", required=True, choices=("torch", "tensorflow"))
    ap.add_argument("--model", required=True, choices=("mlp", "cnn"))
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--out", type=Path, required=True, help="directory for metrics, curves, predictions")
    ap.add_argument("--model-out", type=Path, required=True, help="directory for the saved model")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    meta = prepared_meta(raw)
    spec = specs.from_params(p, a.model, tuple(meta["image_shape"]), len(raw["classes"]))
    be = backends.load(a.framework)
    env = be.setup(p.threads, p.device, p.seed)
    d = {k: normalise(raw[k], raw["mean"], raw["std"]) if k.startswith("x_") else raw[k] for k in raw}
    optim, epochs = specs.Optim.from_params(p, a.model), getattr(p.schedule, a.model).epochs
    cell = f"{a.framework}-{a.model}"
    runs = [run_seed(be, spec, optim, d, p.train, epochs, p.seed + r, f"{cell} seed {p.seed + r}")
            for r in range(p.train.repeats)]
    first = runs[0]
    y_true, y_pred = raw["y_test"], first["logits"].argmax(1)
    labels = np.arange(len(raw["classes"]))
    prec, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    accs = [r["test_acc"] for r in runs]
    metrics = {
        "test_acc": float(np.mean(accs)), "test_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "test_loss": float(np.mean([r["test_loss"] for r in runs])),
        "val_acc": float(np.mean([r["val_acc"] for r in runs])),
        "train_time_s": float(np.mean([r["train_time_s"] for r in runs])),
        "train_samples_per_s": float(np.mean([r["train_samples_per_s"] for r in runs])),
        "params": spec.param_count(), "flops_per_sample": spec.flops_per_sample(), "epochs": epochs,
        "seeds": len(runs), "test_samples": int(len(y_true)), "macro_f1": float(f1.mean()),
    }
    ev, init_logits = evidence(be, spec, d, p.seed, epochs)
    info = {"framework": a.framework, "model": a.model, "dataset": meta["dataset"], **env,
            "optimizer": optim.__dict__, "batch_size": p.train.batch_size, **ev}
    names = [str(c) for c in raw["classes"]]
    out = a.out
    files.write_json(out / "metrics.json", metrics)
    files.write_json(out / "run.json", info)
    for path, df in (
        (out / "history.tsv", pd.DataFrame(first["history"])),
        (out / "seeds.tsv", pd.DataFrame([{k: r[k] for k in ("seed", "test_acc", "test_loss", "val_acc",
                                                               "train_time_s", "wall_time_s", "train_samples_per_s")}
                                          for r in runs])),
        (out / "per_class.tsv", pd.DataFrame({"class": names, "precision": prec, "recall": rec, "f1": f1,
                                              "support": sup})),
        (out / "confusion.tsv", pd.DataFrame(confusion_matrix(y_true, y_pred, labels=labels), index=names,
                                             columns=names).rename_axis("true")),
    ):
        with files.atomic_path(path) as tmp:
            df.to_csv(tmp, sep="\t", index=path.name == "confusion.tsv", float_format="%.6g")
    with files.atomic_path(out / "predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, y_true=y_true, y_pred=y_pred, logits=first["logits"].astype(np.float32),
                            init_logits=init_logits.astype(np.float32))
    with files.atomic_path(a.model_out / f"model{be.MODEL_SUFFIX}") as tmp:
        be.save(first["model"], tmp)
    log.info("%s: test accuracy %.4f (%d seed%s), %.0f samples/s", cell, metrics["test_acc"], len(runs),
             "s" * (len(runs) > 1), metrics["train_samples_per_s"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
