"""Stage `bench`: interleaved rounds of fresh benchmark processes (pipeline/bench.py), then variants and thread
children; writes reports/bench/records.json (every row, env) and metrics.json (per cell, calibration, verdicts).

Run with --child FRAMEWORK, the same script is one benchmark process: it prints its rows as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipeline import backends, bench, calib, files, params
from pipeline.data import load_prepared, normalise, prepared_meta
from pipeline.errors import ChildError

log = logging.getLogger("bench")


def run_child(argv: list[str], framework: str, kind: str, threads: int, label: str) -> list[dict]:
    """One fresh process; its stderr passes through (tracebacks stay visible), its rows come back on stdout."""
    cmd = [sys.executable, "-m", "pipeline.stages.bench", *argv, "--child", framework, "--kind", kind,
           "--threads", str(threads)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode:
        raise ChildError(f"bench child {label} failed (exit {out.returncode}); its error is printed above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(a: argparse.Namespace, p: params.Params) -> None:
    raw = load_prepared(a.data)
    shape, classes = tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"])
    be = backends.load(a.child)
    setup = be.setup(a.threads, p.device, p.seed)
    checked = bench.check_threads(setup, a.threads)
    specs = {m: (params.model_spec(p, m, shape, classes), params.optim(p, m)) for m in p.models}
    x, y = normalise(raw["x_train"], raw["mean"], raw["std"]), raw["y_train"]
    variants = be.variants(p.bench.compile, p.bench.keras_fit) if a.kind == "variants" else [be.DEFAULT]
    rows = bench.child(be, specs, be.put(x, y), len(y), p.bench, p.train.batch_size, p.seed, a.threads, variants)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    info = {"framework": a.child, "framework_version": setup["framework_version"], "device": setup["device"],
            "threads": a.threads, **checked, "peak_rss_mb": rss}
    print(json.dumps([info | r | {"description": be.VARIANTS[r["variant"]]} for r in rows]))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--env", type=Path, help="env.json of the machine (recorded with the results)")
    ap.add_argument("--out", type=Path, help="directory for records.json and metrics.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--child", choices=params.FRAMEWORKS, help="be one benchmark process of this framework")
    ap.add_argument("--kind", choices=("round", "variants", "threads"), default="round")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args(argv)
    p = params.load(a.params)
    if a.child:
        return child_main(a, p)
    base = ["--data", str(a.data), "--params", str(a.params)]
    threads = p.threads or len(os.sched_getaffinity(0))  # 0 = all cores, the same explicit count for both
    cfg = p.bench
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def child(arm: str, kind: str, t: int, label: str) -> list[dict]:
        got = run_child(base, bench.framework_of(arm), kind, t, label)
        log.info("%s: %s; calibration %.0f -> %.0f GFLOP/s", label, ", ".join(
            f"{r['model']} {r['variant']} train {r.get('train_samples_per_s', float('nan')):,.0f} samples/s"
            for r in got), got[0]["calib_before_gflops"], got[0]["calib_after_gflops"])
        return got

    arms = bench.arms(p.frameworks, cfg.control)
    rows = bench.run_rounds(lambda arm, rd: child(arm, "round", threads, f"round {rd + 1} {arm}"), arms,
                            cfg.rounds, cfg.max_drift, log.warning)
    rows += [r | {"kind": "variants", "round": None, "arm": fw, "flag": ""}
             for fw in p.frameworks for r in child(fw, "variants", threads, f"{fw} variants")]
    rows += [r | {"kind": "threads", "round": None, "arm": fw, "flag": ""}
             for fw in p.frameworks for t in cfg.thread_counts if t != threads
             for r in child(fw, "threads", t, f"{fw} {t} threads")]
    raw = load_prepared(a.data)
    shape = tuple(prepared_meta(raw)["image_shape"])
    flops = {m: params.model_spec(p, m, shape, len(raw["classes"])).flops_per_sample() for m in p.models}
    stab = calib.stability(bench.calibrations(rows))  # the whole run's machine; verdicts use their rounds' own
    cells = bench.per_cell(rows, flops, stab["gflops_median"], max(cfg.infer_batch_sizes))
    verdicts = bench.comparisons(rows, p.frameworks, p.models, cfg)
    flagged = sorted({(r["round"], r["arm"], r["flag"]) for r in rows if r["flag"]})
    files.write_json(a.out / "records.json", {
        "format": bench.FORMAT, "started_utc": started,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "frameworks": p.frameworks, "models": p.models, "threads": threads, "arms": arms, "rounds": cfg.rounds,
        "min_effect": cfg.min_effect,
        "flops_per_sample": flops, "env": files.read_json(a.env, "env"), "calibration": stab,
        "flagged": [{"round": rd, "arm": arm, "why": why} for rd, arm, why in flagged], "cells": cells,
        "verdicts": verdicts, "records": rows})
    files.write_json(a.out / "metrics.json", {  # last; numbers only, units in the names, for dvc metrics
        "calib_gflops": stab["gflops_median"], "calib_cv_pct": stab["cv_pct"], "flagged_children": len(flagged),
        **{f"{c['framework']}-{c['model']}": {k: v for k, v in c.items() if isinstance(v, (int, float))}
           for c in cells},
        **{f"{v['model']}_{v['phase']}_{'control' if v['control'] else 'ratio'}": {
            "ratio": v["ratio"], "ci_low": v["ci_low"], "ci_high": v["ci_high"], "rounds": v["rounds"]}
           for v in verdicts}})
    for v in verdicts:
        log.info("%s %s%s: %s", v["model"], v["phase"], " (A/A control)" if v["control"] else "", v["text"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
