"""Stage `bench`: the interleaved bench (measure/bench.py) -> records.json, metrics.json.

Stage `bench`: interleaved rounds of fresh benchmark processes, then variants and thread children
(pipeline/measure/bench.py); writes reports/bench/records.json (every row, verdicts, env) and metrics.json.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import backends, files, params
from pipeline.data.prepare import load_prepared, prepared_meta
from pipeline.measure import bench


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--env", type=Path, required=True, help="env.json of the machine (recorded with the results)")
    ap.add_argument("--out", type=Path, required=True, help="directory for records.json and metrics.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    env = files.read_json(a.env, "env")
    raw = load_prepared(a.data)
    threads = backends.cpu_threads(p.threads)
    records, metrics = bench.run(p, a.data, a.params, threads, tuple(prepared_meta(raw)["image_shape"]),
                                 len(raw["classes"]))
    files.write_json(a.out / "records.json", records | {"env": env})
    files.write_json(a.out / "metrics.json", metrics)  # last: its presence means records.json is there


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
