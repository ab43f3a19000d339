"""Stage `loaders@<framework>`: the data-loader sweep (measure/loaders.py) of one framework."""
from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

from pipeline import backends, files, params
from pipeline.data.prepare import load_prepared, prepared_meta
from pipeline.measure import loaders

log = logging.getLogger("loaders")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", required=True, choices=backends.FRAMEWORKS)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--env", type=Path, required=True, help="env.json of the machine (recorded with the results)")
    ap.add_argument("--out", type=Path, required=True, help="directory for metrics.json and records.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    models = params.networks(p, tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"]))
    be = backends.create(a.framework, p.threads, p.device, p.seed, p.precision)
    rows = loaders.sweep(be, raw, p.loaders, models, p.seed)
    files.write_json(a.out / "records.json", {"framework": a.framework, "setup": be.info,
                                              "env": files.read_json(a.env, "env"), "records": rows})
    summary = loaders.summarise(rows)
    files.write_json(a.out / "metrics.json", summary)  # flat, for DVC; last
    log.info("best: %s", ", ".join(f"{k}={v}" for k, v in summary.items() if "best_workers" in k))


if __name__ == "__main__":
    # More workers than cores is a setting this sweep measures on purpose, not a mistake to warn about.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
