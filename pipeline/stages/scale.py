"""Stage `scale`: data-parallel scaling (scale/run.py) -> records.json, metrics.json.

Stage `scale`: for each worker count in `scale.workers`, launches of torchrun/DDP and tf.distribute's multi-worker
strategy in interleaved, calibrated rounds (pipeline/scale/run.py); writes reports/scale/records.json (every launch,
the table, the verdicts, env) and metrics.json. With no worker counts it writes a record saying so, in a second.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import backends, files, params
from pipeline.scale import run


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--env", type=Path, required=True, help="env.json of the machine (recorded with the results)")
    ap.add_argument("--out", type=Path, required=True, help="directory for records.json and metrics.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    env = files.read_json(a.env, "env")
    threads = backends.cpu_threads(p.threads)  # each worker gets threads / workers
    records, metrics = run.run(p, a.data, a.params, threads)
    files.write_json(a.out / "records.json", records | {"env": env})
    files.write_json(a.out / "metrics.json", metrics)  # last: its presence means records.json is there


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
