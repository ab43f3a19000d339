"""One train cell: its seeds' runs, metrics over them, per-class tables, equivalence evidence.

One train cell (framework x model): its seeds' runs, the metrics over them, the per-class and confusion tables,
and the evidence that every framework did the same work.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline.backends.base import Backend
from pipeline.params import Train
from pipeline.records import CellMetrics, SeedRun
from pipeline.spec import ModelSpec, Optim, batch_order, digest, dropout_masks, init_weights
from pipeline.train.loop import evaluate, predict, train

EVIDENCE_SAMPLES = 256  # validation images whose initial logits are kept to compare the frameworks


@dataclass
class Trained:
    """A cell's outcome: what its files hold."""
    seeds: list[SeedRun]
    metrics: CellMetrics
    model: Any                 # the first seed's trained model (saved)
    history: pd.DataFrame      # the first seed's evaluations
    logits: np.ndarray         # the first seed's test logits
    per_class: pd.DataFrame    # precision, recall, F1, support per class (first seed)
    confusion: pd.DataFrame    # true x predicted counts (first seed)
    evidence: dict             # digests and counts for the equivalence table
    init_logits: np.ndarray    # logits of the initial weights on EVIDENCE_SAMPLES validation images


def run_seed(be: Backend, spec: ModelSpec, optim: Optim, d: dict, placed: tuple, tp: Train, epochs: int,
             target: float, seed: int, desc: str) -> tuple[SeedRun, dict]:
    """Train from the seed's initial weights until the target (or the epoch cap) on the cell's `placed` (train,
    val, test) data; test at the stop. Returns the seed's row and what only the first seed keeps (model, history,
    logits)."""
    be.reseed(seed)
    model = be.build(spec, init_weights(spec, seed))
    tr, va, te = placed
    t0 = time.perf_counter()
    history, outcome = train(be, model, optim, tr, va, d["y_val"], epochs=epochs, batch_size=tp.batch_size,
                             eval_batch_size=tp.eval_batch_size, eval_every=tp.eval_steps(), target=target,
                             stop_at_target=tp.stop_at_target, seed=seed, desc=desc,
                             dropout=shared_masks(spec, seed, len(tr[1]), tp.batch_size))
    wall = time.perf_counter() - t0
    test_loss, test_acc, logits = evaluate(be, be.make_predict(model, be.DEFAULT), te, d["y_test"],
                                           tp.eval_batch_size)
    o = outcome
    row = SeedRun(seed=seed, test_acc=test_acc, test_loss=test_loss, val_acc=history[-1]["val_acc"],
                  reached=o.reached, time_to_target_s=o.time_to_target_s, steps_to_target=o.steps_to_target,
                  epochs_to_target=o.epochs_to_target, best_val_acc=o.best_val_acc, train_time_s=o.train_s,
                  wall_time_s=wall, train_samples_per_s=o.stopped_at_step * tp.batch_size / o.train_s,
                  epochs_trained=history[-1]["epoch"], diverged=o.diverged, diverged_at_step=o.diverged_at_step)
    return row, {"model": model, "history": history, "logits": logits}


def shared_masks(spec: ModelSpec, seed: int, n: int, batch_size: int) -> Callable[[int], list[np.ndarray]]:
    """Each epoch's shared dropout masks for its full batches: the same units dropped in every framework."""
    return lambda epoch: dropout_masks(spec, seed, epoch, n // batch_size * batch_size)


def summarise(runs: list[SeedRun], target: float, spec: ModelSpec, epochs: int, y_true: np.ndarray,
              first_logits: np.ndarray, classes: int) -> tuple[CellMetrics, dict]:
    """(metrics over seeds, per-class precision/recall/F1 of the first seed)."""
    y_pred = first_logits.argmax(1)
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(classes),
                                                             zero_division=0)
    accs = [r.test_acc for r in runs]
    ttt = [r.time_to_target_s for r in runs if r.reached]
    metrics = CellMetrics(
        target_val_acc=target, reached_seeds=len(ttt),
        # median and range over the seeds that reached it; None when none did (the report says "not reached")
        time_to_target_s=float(np.median(ttt)) if ttt else None,
        time_to_target_s_min=min(ttt) if ttt else None, time_to_target_s_max=max(ttt) if ttt else None,
        epochs_to_target=float(np.median([r.epochs_to_target for r in runs if r.reached])) if ttt else None,
        best_val_acc=float(np.mean([r.best_val_acc for r in runs])),
        test_acc=float(np.mean(accs)), test_acc_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        test_loss=float(np.mean([r.test_loss for r in runs])), val_acc=float(np.mean([r.val_acc for r in runs])),
        train_time_s=float(np.mean([r.train_time_s for r in runs])),
        train_samples_per_s=float(np.mean([r.train_samples_per_s for r in runs])),
        seeds=len(runs), test_samples=int(len(y_true)), macro_f1=float(f1.mean()), params=spec.param_count(),
        flops_per_sample=spec.flops_per_sample(), epochs=epochs,
        epochs_trained=float(np.mean([r.epochs_trained for r in runs])), diverged_seeds=sum(r.diverged for r in runs))
    return metrics, {"precision": prec, "recall": rec, "f1": f1, "support": support}


def evidence(be: Backend, spec: ModelSpec, d: dict, seed: int, epochs: int, batch_size: int) -> tuple[dict,
                                                                                                      np.ndarray]:
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
            "dropout_masks_sha256": digest(shared_masks(spec, seed, n, batch_size)(0)),  # the first epoch's
            "readback_weights_sha256": digest(be.get_weights(model, spec)),
            "val_samples": len(d["y_val"])}, logits  # the images each validation accuracy was read on


def warm(be: Backend, spec: ModelSpec, optim: Optim, placed: tuple, tp: Train, seed: int) -> None:
    """Untimed, before the first seed: a throwaway model's first two steps and one evaluation batch, so the process's
    one-off costs (CUDA, cuBLAS and cuDNN start, kernel loading, the allocator's first blocks) are not in the first
    seed's time to target while later seeds skip them. A model's own tracing stays in each seed's time."""
    model = be.build(spec, init_weights(spec, seed))
    step, tr, va = be.make_step(model, optim, be.DEFAULT), placed[0], placed[1]
    masks = [be.array(m[:2 * tp.batch_size]) for m in shared_masks(spec, seed, len(tr[1]), tp.batch_size)(0)]
    for i, (xb, yb) in enumerate(itertools.islice(be.batches(tr, batch_order(len(tr[1]), seed, 0), tp.batch_size),
                                                  2)):
        be.sync(step(xb, yb, [m[i * tp.batch_size:(i + 1) * tp.batch_size] for m in masks])[0])
    be.sync(be.make_predict(model, be.DEFAULT)(be.take(va, np.arange(min(tp.eval_batch_size, len(va[1]))))[0]))


def train_cell(be: Backend, spec: ModelSpec, optim: Optim, d: dict, tp: Train, epochs: int, target: float,
               seed: int, names: list[str], label: str) -> Trained:
    """`tp.repeats` seeds from `seed` on; the metrics over them; the first seed's tables; the evidence."""
    # placed once for every seed (read, never written, by training): on a GPU each seed would copy it again
    placed = tuple(be.put(d[f"x_{s}"], d[f"y_{s}"]) for s in ("train", "val", "test"))
    warm(be, spec, optim, placed, tp, seed)
    runs = [run_seed(be, spec, optim, d, placed, tp, epochs, target, seed + r, f"{label} seed {seed + r}")
            for r in range(tp.repeats)]
    seeds, first = [r for r, _ in runs], runs[0][1]
    y_true = d["y_test"]
    metrics, per_class = summarise(seeds, target, spec, epochs, y_true, first["logits"], len(names))
    confusion = pd.DataFrame(confusion_matrix(y_true, first["logits"].argmax(1), labels=np.arange(len(names))),
                             index=names, columns=names).rename_axis("true")
    ev, init_logits = evidence(be, spec, d, seed, epochs, tp.batch_size)
    return Trained(seeds, metrics, first["model"], pd.DataFrame(first["history"]), first["logits"],
                   pd.DataFrame({"class": names, **per_class}), confusion, ev, init_logits)
