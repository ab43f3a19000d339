"""Stage `bench@<framework>-<model>`: training/inference throughput, batch-1 latency, compile variants,
thread scaling and % of a measured matmul peak, for one cell in its own process."""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline import backends, bench, files, params
from pipeline.data import load_prepared, normalise, prepared_meta
from pipeline.errors import DataError

log = logging.getLogger("bench")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", required=True, choices=("torch", "tensorflow"))
    ap.add_argument("--model", required=True, choices=("mlp", "cnn"))
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--env", type=Path, required=True, help="env.json of the machine (recorded with the results)")
    ap.add_argument("--out", type=Path, help="directory for metrics.json and records.json (not with --threads)")
    ap.add_argument("--threads", type=int, help="thread-scaling child: this many threads, default variant only")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    spec = params.model_spec(p, a.model, tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"]))
    be = backends.load(a.framework)
    threads = a.threads or p.threads
    env = be.setup(threads, p.device, p.seed)
    x, y = normalise(raw["x_train"][:bench.MAX_SAMPLES], raw["mean"], raw["std"]), raw["y_train"][:bench.MAX_SAMPLES]
    optim = params.optim(p, a.model)
    if a.threads:  # child process of the thread sweep: TF fixes its thread pools once per process
        rows, _ = bench.bench(be, spec, optim, x, y, p.bench, threads, [be.DEFAULT])
        print(json.dumps(rows))
        return
    variants = be.variants(p.bench.compile, p.bench.keras_fit)
    rows, peak = bench.bench(be, spec, optim, x, y, p.bench, env["intra_op_threads"], variants)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    for t in tqdm(p.bench.thread_counts, desc="threads", disable=None):
        cmd = [sys.executable, "-m", "pipeline.stages.bench", *argv, "--threads", str(t)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise DataError(f"thread sweep child ({t} threads) failed: {out.stderr.strip()[-300:]}")
        rows += [r | {"phase": "threads-" + r["phase"]} for r in json.loads(out.stdout.strip().splitlines()[-1])
                 if r["phase"] in ("train", "infer")]
    metrics = {**bench.headline(rows, be.DEFAULT, p.bench, peak), "peak_rss_mb": peak_rss_mb,
               "params": spec.param_count(), "flops_per_sample": spec.flops_per_sample()}
    files.write_json(a.out / "records.json", {
        "framework": a.framework, "model": a.model, "default_variant": be.DEFAULT,
        "variants": {v: be.VARIANTS[v] for v in variants}, "setup": env, "env": files.read_json(a.env, "env"),
        "records": rows})
    files.write_json(a.out / "metrics.json", metrics)  # flat numbers with units in the names, for DVC
    log.info("%s-%s: train %.0f samples/s, infer %.0f samples/s", a.framework, a.model,
             metrics.get("train_samples_per_s", float("nan")), metrics.get("infer_samples_per_s", float("nan")))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
