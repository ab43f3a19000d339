"""The training and evaluation loops, written once over the backend contract."""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.backends.base import Backend
from pipeline.spec import Optim, batch_order, lr_at

log = logging.getLogger("train")


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy on logits, computed in float64 NumPy: one formula for both frameworks."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def predict(be: Backend, fn: Callable[[Any], Any], data: Any, batch_size: int) -> np.ndarray:
    """Logits of `fn` (from be.make_predict) for every sample of `data`, in batches."""
    n = len(data[1])
    out = [be.numpy(fn(be.take(data, np.arange(i, min(i + batch_size, n)))[0])) for i in range(0, n, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(be: Backend, fn: Callable[[Any], Any], data: Any, y: np.ndarray,
             batch_size: int) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy, logits) of predictor `fn` on a whole split."""
    logits = predict(be, fn, data, batch_size)
    return cross_entropy(logits, y), float((logits.argmax(1) == y).mean()), logits


Masks = Callable[[int], list[np.ndarray]]  # epoch -> the shared dropout masks of its samples (spec.dropout_masks)


@dataclass(frozen=True)
class Outcome:
    """How a training run ended, time to target first (MLPerf-style: the first evaluation at or above it)."""
    target: float                          # validation accuracy that counts as trained
    reached: bool = False
    time_to_target_s: float | None = None  # training seconds (evaluation excluded) until then
    steps_to_target: int | None = None
    epochs_to_target: float | None = None
    diverged: bool = False                 # the loss stopped being finite; training stopped there
    diverged_at_step: int | None = None
    best_val_acc: float = math.nan
    stopped_at_step: int = 0
    train_s: float = math.nan              # training seconds until it stopped (target, cap or divergence)


def train(be: Backend, model: Any, optim: Optim, train_data: Any, val_data: Any, y_val: np.ndarray, *, epochs: int,
          batch_size: int, eval_batch_size: int, eval_every: int, target: float, stop_at_target: bool, seed: int,
          desc: str = "train", dropout: Masks | None = None) -> tuple[list[dict], Outcome]:
    """Train with the seed's batch order, evaluating the validation split every `eval_every` steps (every epoch if
    an epoch is shorter) and at the end. `dropout`: the run's shared masks, made and put on the device before each
    epoch's clock starts (else each framework draws its own).

    The training clock runs only while optimizer steps (and the per-epoch gather) run: evaluation is timed apart.
    Returns one history row per evaluation and the time-to-target outcome: the first training time, step and epoch
    at which validation accuracy reached `target` (MLPerf-style; training ends there if `stop_at_target`). A loss
    that is no longer finite at an evaluation ends the run there, marked diverged (its weights predict nothing).
    """
    step_fn, predict_fn = be.make_step(model, optim, be.DEFAULT), be.make_predict(model, be.DEFAULT)
    n = len(train_data[1])
    per_epoch = n // batch_size  # full batches only (Backend.batches)
    total = epochs * per_epoch
    cadence = min(eval_every, per_epoch)  # small datasets: at least one evaluation per epoch
    history: list[dict] = []
    outcome = Outcome(target)
    clock, step, loss_sum, correct, seen, since = 0.0, 0, 0.0, 0, 0, 0.0
    quiet = not sys.stderr.isatty()  # no bar without a terminal: a log line per evaluation instead
    with tqdm(total=total, desc=desc, unit="step", disable=True if quiet else None) as bar:
        for epoch in range(epochs):
            masks = [be.array(m) for m in dropout(epoch)] if dropout else None  # not the framework's work: untimed
            t0 = time.perf_counter()
            for i, (xb, yb) in enumerate(be.batches(train_data, batch_order(n, seed, epoch), batch_size)):
                if not optim.constant():
                    step_fn.set_lr(lr_at(optim, step, total, per_epoch))
                keep = [m[i * batch_size:(i + 1) * batch_size] for m in masks] if masks else None
                loss, right = step_fn(xb, yb, keep)
                loss_sum, correct, seen, step = loss_sum + loss, correct + right, seen + batch_size, step + 1
                bar.update()
                if step % cadence and step != total:
                    continue
                loss_sum, correct = float(loss_sum), int(correct)  # waits for the queued steps
                clock += time.perf_counter() - t0
                row = {"step": step, "epoch": step / per_epoch, "train_loss": loss_sum / seen,
                       "train_acc": correct / seen, "train_s": clock, "samples_per_s": seen / (clock - since)}
                if not math.isfinite(loss_sum):
                    history.append(row | {"val_loss": math.nan, "val_acc": math.nan, "eval_s": 0.0})
                    log.warning("%s: training diverged at step %d of %d (loss %s); stopped there", desc, step,
                                total, loss_sum)
                    return history, replace(outcome, diverged=True, diverged_at_step=step, **_end(history))
                t0 = time.perf_counter()
                row["val_loss"], row["val_acc"], _ = evaluate(be, predict_fn, val_data, y_val, eval_batch_size)
                row["eval_s"] = time.perf_counter() - t0
                history.append(row)
                _show(bar, quiet, desc, row, total)
                if row["val_acc"] >= target and not outcome.reached:
                    outcome = replace(outcome, reached=True, time_to_target_s=clock, steps_to_target=step,
                                      epochs_to_target=row["epoch"])
                    if stop_at_target:
                        return history, replace(outcome, **_end(history))
                loss_sum, correct, seen, since = 0.0, 0, 0, clock
                t0 = time.perf_counter()
            clock += time.perf_counter() - t0  # steps after the last evaluation of this epoch
    return history, replace(outcome, **_end(history))


def _show(bar: tqdm, quiet: bool, desc: str, row: dict, total: int) -> None:
    """An evaluation on the progress bar, or as a log line when there is no terminal."""
    bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_acc']:.4f}")
    if quiet:
        eta = (total - row["step"]) * row["train_s"] / row["step"]
        log.info("%s step %d/%d (epoch %.2f): train loss %.4f, val acc %.4f, %.0f samples/s, %.0f s training, "
                 "ETA %.0f s", desc, row["step"], total, row["epoch"], row["train_loss"], row["val_acc"],
                 row["samples_per_s"], row["train_s"], eta)


def _end(history: list[dict]) -> dict:
    evaluated = [h["val_acc"] for h in history if math.isfinite(h["val_acc"])]
    return {"best_val_acc": max(evaluated) if evaluated else math.nan, "stopped_at_step": history[-1]["step"],
            "train_s": history[-1]["train_s"]}
