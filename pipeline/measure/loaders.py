"""The data-loader sweep (num_workers, num_parallel_calls): loader alone, and feeding training.

The data-loader parallelism sweep: PyTorch DataLoader num_workers / tf.data num_parallel_calls (plus
AUTOTUNE) over a per-sample pipeline, the loader alone and training fed by it; the best setting per measurement.
"""
from __future__ import annotations

import gc
import logging
from typing import Any, Iterator

from tqdm import tqdm

from pipeline.backends.base import Backend, Feed
from pipeline.probe import timing
from pipeline.params import Loaders
from pipeline.spec import ModelSpec, Optim, init_weights

log = logging.getLogger("loaders")


def _rate(per_batch_s: list[float], batch: int) -> dict:
    r = timing.rates(per_batch_s, batch)
    return r.flat() | {"batches_per_s": r.samples_per_s / batch}  # median(b/t) = b * median(1/t)


def sweep(be: Backend, raw: dict, lp: Loaders, models: dict[str, tuple[ModelSpec, Optim]],
          seed: int) -> list[dict]:
    """One row per (setting, what): the loader alone, then training each model fed by the loader."""
    rows = []
    feed = Feed(raw["x_train"], raw["y_train"], float(raw["mean"]), float(raw["std"]), lp.batch_size, lp.shift, seed,
                lp.pin_memory, lp.persistent_workers, lp.prefetch)
    for w in tqdm(be.loader_settings(lp.workers), desc="workers", disable=None):
        it: Iterator[Any] = be.make_loader(feed, w)
        rows.append({"workers": str(w), "what": "loader", **_rate(
            timing.repeat(lambda k, it=it: [next(it) for _ in range(k)][-1], lp.warmup, lp.batches, lp.repeats,
                          be.sync), lp.batch_size)})
        for name, (spec, optim) in models.items():
            step = be.make_step(be.build(spec, init_weights(spec, seed)), optim, be.DEFAULT)
            rows.append({"workers": str(w), "what": f"train-{name}", **_rate(
                timing.repeat(lambda k, it=it, step=step: [step(*next(it)) for _ in range(k)][-1], lp.warmup,
                              lp.batches, lp.repeats, be.sync), lp.batch_size)})
        log.info("workers=%s: %s", w, ", ".join(f"{r['what']} {r['samples_per_s']:,.0f} samples/s"
                                               for r in rows if r["workers"] == str(w)))
        del it  # shuts the worker processes down before the next setting starts its own
        gc.collect()
    return rows


def summarise(rows: list[dict]) -> dict:
    """Best setting per measurement and its speed-up over 0 workers (flat, for dvc metrics)."""
    out = {}
    for what in dict.fromkeys(r["what"] for r in rows):
        sub = [r for r in rows if r["what"] == what]
        best = max(sub, key=lambda r: r["samples_per_s"])
        base = next((r for r in sub if r["workers"] == "0"), None)
        key = what.replace("-", "_")
        out[f"{key}_best_workers"] = best["workers"]
        out[f"{key}_best_samples_per_s"] = best["samples_per_s"]
        if base:
            out[f"{key}_workers0_samples_per_s"] = base["samples_per_s"]
            out[f"{key}_best_speedup_x"] = best["samples_per_s"] / base["samples_per_s"]
    return out
