"""Stage `loaders@<framework>`: the num_workers effect. PyTorch DataLoader num_workers / tf.data
num_parallel_calls (plus AUTOTUNE) over a per-sample pipeline: the loader alone, and training fed by it."""
from __future__ import annotations

import argparse
import gc
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from tqdm import tqdm

from pipeline import backends, files, params, spec as specs, timing
from pipeline.data import load_prepared, prepared_meta

log = logging.getLogger("loaders")


def _rate(per_batch_s: list[float], batch: int) -> dict:
    r = timing.rates(per_batch_s, batch)
    return r | {"batches_per_s": r["samples_per_s"] / batch}  # median(b/t) = b * median(1/t)


def sweep(be: ModuleType, raw: dict, lp: params.Loaders, models: dict[str, tuple[specs.ModelSpec, specs.Optim]],
          seed: int) -> list[dict]:
    """One row per (setting, what): the loader alone, then training each model fed by the loader."""
    rows = []
    for w in tqdm(be.loader_settings(lp.workers), desc="workers", disable=None):
        it: Iterator[Any] = be.make_loader(raw["x_train"], raw["y_train"], float(raw["mean"]), float(raw["std"]),
                                           lp.batch_size, w, lp.shift, seed, lp.pin_memory,
                                           lp.persistent_workers, lp.prefetch)
        rows.append({"workers": str(w), "what": "loader", **_rate(
            timing.repeat(lambda k, it=it: [next(it) for _ in range(k)][-1], lp.warmup, lp.batches, lp.repeats,
                          be.sync), lp.batch_size)})
        for name, (spec, optim) in models.items():
            step = be.make_step(be.build(spec, specs.init_weights(spec, seed)), optim, be.DEFAULT)
            rows.append({"workers": str(w), "what": f"train-{name}", **_rate(
                timing.repeat(lambda k, it=it, step=step: [step(*next(it)) for _ in range(k)][-1], lp.warmup,
                              lp.batches, lp.repeats, be.sync), lp.batch_size)})
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


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", required=True, choices=("torch", "tensorflow"))
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--env", type=Path, required=True, help="env.json of the machine (recorded with the results)")
    ap.add_argument("--out", type=Path, required=True, help="directory for metrics.json and records.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    shape = tuple(prepared_meta(raw)["image_shape"])
    models = {m: (specs.from_params(p, m, shape, len(raw["classes"])), specs.Optim.from_params(p, m))
              for m in p.models}
    be = backends.load(a.framework)
    env = be.setup(p.threads, p.device, p.seed)
    rows = sweep(be, raw, p.loaders, models, p.seed)
    files.write_json(a.out / "records.json", {"framework": a.framework, "setup": env,
                                              "env": files.read_json(a.env, "env"), "records": rows})
    files.write_json(a.out / "metrics.json", summarise(rows))  # flat, for DVC
    for r in rows:
        log.info("%-10s workers=%-8s %8.0f samples/s (IQR %.0f)", r["what"], r["workers"], r["samples_per_s"],
                 r["samples_per_s_iqr"])


if __name__ == "__main__":
    # More workers than cores is a setting this sweep measures on purpose, not a mistake to warn about.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
