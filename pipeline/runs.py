"""One train cell: its seeds' runs, the metrics over them, and the evidence that both frameworks did the same work."""
from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from pipeline.backends import Backend
from pipeline.loop import evaluate, predict, train
from pipeline.params import Train
from pipeline.spec import ModelSpec, Optim, batch_order, digest, init_weights

EVIDENCE_SAMPLES = 256  # validation images whose initial logits are kept to compare the frameworks


def run_seed(be: Backend, spec: ModelSpec, optim: Optim, d: dict, tp: Train, epochs: int, target: float,
             seed: int, desc: str) -> dict:
    """Train from the seed's initial weights until the target (or the epoch cap); test at the stop."""
    be.reseed(seed)
    model = be.build(spec, init_weights(spec, seed))
    tr, va, te = (be.put(d[f"x_{s}"], d[f"y_{s}"]) for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    history, outcome = train(be, model, optim, tr, va, d["y_val"], epochs=epochs, batch_size=tp.batch_size,
                             eval_batch_size=tp.eval_batch_size, eval_every=tp.eval_every, target=target,
                             stop_at_target=tp.stop_at_target, seed=seed, desc=desc)
    wall = time.perf_counter() - t0
    test_loss, test_acc, logits = evaluate(be, be.make_predict(model, be.DEFAULT), te, d["y_test"],
                                           tp.eval_batch_size)
    samples = outcome["stopped_at_step"] * tp.batch_size
    return {"seed": seed, "history": history, "model": model, "logits": logits, "test_acc": test_acc,
            "test_loss": test_loss, "val_acc": history[-1]["val_acc"], "train_time_s": outcome["train_s"],
            "wall_time_s": wall, "train_samples_per_s": samples / outcome["train_s"], **outcome}


def summarise(runs: list[dict], y_true: np.ndarray, classes: int) -> tuple[dict, dict]:
    """(metrics over seeds, per-class precision/recall/F1 of the first seed)."""
    y_pred = runs[0]["logits"].argmax(1)
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(classes),
                                                             zero_division=0)
    accs = [r["test_acc"] for r in runs]
    ttt = [r["time_to_target_s"] for r in runs if r["reached"]]
    metrics = {
        "target_val_acc": runs[0]["target"], "reached_seeds": len(ttt),
        # median and range over the seeds that reached it; None when none did (the report says "not reached")
        "time_to_target_s": float(np.median(ttt)) if ttt else None,
        "time_to_target_s_min": min(ttt) if ttt else None, "time_to_target_s_max": max(ttt) if ttt else None,
        "epochs_to_target": float(np.median([r["epochs_to_target"] for r in runs if r["reached"]])) if ttt else None,
        "best_val_acc": float(np.mean([r["best_val_acc"] for r in runs])),
        "test_acc": float(np.mean(accs)), "test_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "test_loss": float(np.mean([r["test_loss"] for r in runs])),
        "val_acc": float(np.mean([r["val_acc"] for r in runs])),
        "train_time_s": float(np.mean([r["train_time_s"] for r in runs])),
        "train_samples_per_s": float(np.mean([r["train_samples_per_s"] for r in runs])),
        "seeds": len(runs), "test_samples": int(len(y_true)), "macro_f1": float(f1.mean()),
    }
    return metrics, {"precision": prec, "recall": rec, "f1": f1, "support": support}


def evidence(be: Backend, spec: ModelSpec, d: dict, seed: int, epochs: int) -> tuple[dict, np.ndarray]:
    """What the report needs to show the cells did the same work: weight/order digests, initial logits."""
    w0 = init_weights(spec, seed)
    x = d["x_val"][:EVIDENCE_SAMPLES]
    model = be.build(spec, w0)
    logits = predict(be, be.make_predict(model, be.DEFAULT), be.put(x, d["y_val"][:EVIDENCE_SAMPLES]),
                     EVIDENCE_SAMPLES)
    n = len(d["y_train"])
    return {"param_count": spec.param_count(), "layer_param_counts": spec.layer_param_counts(),
            "init_weights_sha256": digest(w0),
            "batch_order_sha256": digest([batch_order(n, seed, e) for e in range(epochs)]),
            "readback_weights_sha256": digest(be.get_weights(model, spec))}, logits
