"""The training and evaluation loops, written once over the backend interface (torch_backend / tensorflow_backend)."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.backends import Backend
from pipeline.spec import Optim, batch_order


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


def train(be: Backend, model: Any, optim: Optim, train_data: Any, val_data: Any, y_val: np.ndarray, epochs: int,
          batch_size: int, eval_batch_size: int, seed: int, desc: str = "train") -> list[dict]:
    """Train for `epochs` with the seed's batch order; one history row per epoch.

    `train_s` times only the optimizer steps (its first epoch includes tracing/compilation, as a user's
    run would); validation is timed apart.
    """
    variant = be.DEFAULT  # each backend's default path
    step, fn = be.make_step(model, optim, variant), be.make_predict(model, variant)
    n = len(train_data[1])
    history = []
    with tqdm(total=epochs * ((n + batch_size - 1) // batch_size), desc=desc, unit="step", disable=None) as bar:
        for epoch in range(epochs):
            order = batch_order(n, seed, epoch)
            loss_sum: Any = 0.0
            correct: Any = 0
            t0 = time.perf_counter()
            for i in range(0, n, batch_size):
                l, c = step(*be.take(train_data, order[i:i + batch_size]))
                loss_sum, correct = loss_sum + l, correct + c
                bar.update()
            row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}
            row["train_s"] = time.perf_counter() - t0  # float() above waited for the last step
            t0 = time.perf_counter()
            row["val_loss"], row["val_acc"], _ = evaluate(be, fn, val_data, y_val, eval_batch_size)
            row["val_s"] = time.perf_counter() - t0
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_acc']:.4f}")
            history.append(row)
    return history
