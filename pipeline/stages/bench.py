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
from types import ModuleType

import numpy as np
from tqdm import tqdm

from pipeline import backends, files, params, spec as specs, timing
from pipeline.data import load_prepared, normalise, prepared_meta

log = logging.getLogger("bench")
MAX_SAMPLES = 8192  # in-memory images the timed steps cycle through (enough for any batch in params)


def record(phase: str, variant: str, batch: int, threads: int, per_step_s: list[float], items: int,
           peak_flops: float | None = None) -> dict:
    """One tidy measurement row: samples/s median and spread over repeats, step time, % of peak."""
    row = {"phase": phase, "variant": variant, "batch_size": batch, "threads": threads, "status": "ok",
           **timing.rates(per_step_s, items)}
    if peak_flops:
        row["pct_of_peak"] = 100.0 * row["samples_per_s"] / peak_flops
    return row


def measure_variant(be: ModuleType, spec: specs.ModelSpec, optim: specs.Optim, data: tuple, variant: str,
                    b: params.Bench, threads: int, peak_gflops: float) -> list[dict]:
    """Training and inference rows for one variant (fresh model from the same initial weights)."""
    fwd = spec.flops_per_sample()
    model = be.build(spec, specs.init_weights(spec, 0))
    rows = [record("train", variant, b.batch_size, threads,
                   be.train_timings(model, optim, data, variant, b.batch_size, b.warmup, b.steps, b.repeats),
                   b.batch_size, peak_gflops * 1e9 / (3 * fwd))]  # training ~ forward + 2x backward
    predict = be.make_predict(model, variant)
    for bs in b.infer_batch_sizes:
        xb = be.take(data, np.arange(bs))[0]
        per_call = timing.repeat(lambda k, xb=xb: [predict(xb) for _ in range(k)][-1], b.warmup, b.steps,
                                 b.repeats, be.sync)
        rows.append(record("infer", variant, bs, threads, per_call, bs, peak_gflops * 1e9 / fwd))
    x1 = be.take(data, np.arange(1))[0]
    lat = timing.latencies(lambda: predict(x1), b.warmup, b.latency_calls, be.sync) * 1e3
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    rows.append({"phase": "latency", "variant": variant, "batch_size": 1, "threads": threads, "status": "ok",
                 "latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99, "calls": len(lat)})
    return rows


def bench(be: ModuleType, spec: specs.ModelSpec, optim: specs.Optim, x: np.ndarray, y: np.ndarray,
          b: params.Bench, threads: int, variants: list[str]) -> tuple[list[dict], float]:
    """All variants' rows plus the matmul peak (GFLOP/s) measured in this process."""
    reps = -(-max([b.batch_size, *b.infer_batch_sizes]) // len(y))  # tile a small dataset: every batch full
    data = be.put(np.concatenate([x] * reps), np.concatenate([y] * reps))
    mm = b.matmul_size
    peak = [2 * mm**3 / s / 1e9 for s in timing.repeat(be.matmul(mm), b.warmup, b.steps, b.repeats, be.sync)]
    peak_gflops = float(np.median(peak))
    rows = [{"phase": "matmul", "variant": "fp32", "batch_size": mm, "threads": threads, "status": "ok",
             "gflops": peak_gflops, "gflops_iqr": timing.spread(peak)["iqr"]}]
    for variant in tqdm(variants, desc="variants", disable=None):
        try:
            rows += measure_variant(be, spec, optim, data, variant, b, threads, peak_gflops)
        except Exception as e:  # an option this machine lacks (no compiler, no XLA) is a result, not a crash
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            log.warning("%s unsupported here: %s", variant, reason)
            rows.append({"phase": "train", "variant": variant, "batch_size": b.batch_size, "threads": threads,
                         "status": "unsupported", "reason": reason})
    return rows, peak_gflops


def headline(rows: list[dict], default: str, b: params.Bench, peak_gflops: float) -> dict:
    """Flat metrics (units in the names) of the default variant, for `dvc metrics show/diff`."""
    pick = {(r["phase"], r["batch_size"]): r for r in rows if r["variant"] == default and r["status"] == "ok"}
    tr, inf, lat = (pick.get(("train", b.batch_size)), pick.get(("infer", max(b.infer_batch_sizes))),
                    pick.get(("latency", 1)))
    out = {"matmul_gflops": peak_gflops}
    if tr:
        out |= {"train_samples_per_s": tr["samples_per_s"], "train_samples_per_s_iqr": tr["samples_per_s_iqr"],
                "train_cv_pct": tr["cv_pct"], "train_step_time_ms_p50": tr["step_time_ms_p50"],
                "train_pct_of_peak": tr["pct_of_peak"]}
    if inf:
        out |= {"infer_samples_per_s": inf["samples_per_s"], "infer_samples_per_s_iqr": inf["samples_per_s_iqr"],
                "infer_pct_of_peak": inf["pct_of_peak"]}
    if lat:
        out |= {k: lat[k] for k in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99")}
    return out


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
    spec = specs.from_params(p, a.model, tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"]))
    be = backends.load(a.framework)
    threads = a.threads or p.threads
    env = be.setup(threads, p.device, p.seed)
    x, y = normalise(raw["x_train"][:MAX_SAMPLES], raw["mean"], raw["std"]), raw["y_train"][:MAX_SAMPLES]
    optim = specs.Optim.from_params(p, a.model)
    if a.threads:  # child process of the thread sweep: TF fixes its thread pools once per process
        rows, _ = bench(be, spec, optim, x, y, p.bench, threads, [be.DEFAULT])
        print(json.dumps(rows))
        return
    variants = be.variants(p.bench.compile, p.bench.keras_fit)
    rows, peak = bench(be, spec, optim, x, y, p.bench, env["intra_op_threads"], variants)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    for t in tqdm(p.bench.thread_counts, desc="threads", disable=None):
        cmd = [sys.executable, "-m", "pipeline.stages.bench", *argv, "--threads", str(t)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise files.DataError(f"thread sweep child ({t} threads) failed: {out.stderr.strip()[-300:]}")
        rows += [r | {"phase": "threads-" + r["phase"]} for r in json.loads(out.stdout.strip().splitlines()[-1])
                 if r["phase"] in ("train", "infer")]
    metrics = {**headline(rows, be.DEFAULT, p.bench, peak), "peak_rss_mb": peak_rss_mb,
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
