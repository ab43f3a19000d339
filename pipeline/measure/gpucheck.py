"""`make gpu-check`: train stages and bench children on one GPU, by precision and batch size.

    python -m pipeline.measure.gpucheck [--data data/prepared.npz] [--params params.yaml] [--out FILE]
        [--batch-sizes 128,512,2048] [--precisions fp32,tf32,bf16,fp16] [--variants channels_last] [--cpu]
        [--no-train]

For a GPU owner, in a few minutes: it times the train stage of every cell on the GPU (the stage's own script with
params.yaml's settings and device cuda), then starts one fresh bench child per framework, precision and training
batch size (the bench's own child, variants kind: the default path and each variant asked for), and prints stage
times; training and inference samples/s; the device speedometer (a matmul at that precision) and each rate's share
of it; and the device memory training peaked at. A framework that is not installed (TensorFlow is often absent on
a GPU box) is skipped and said. No verdicts: one process per point is a survey; the interleaved bench
(`dvc exp run -S device=cuda ...`) gives those. Nothing is written under reports/ (those are DVC's); --out keeps
the rows as JSON. `--cpu` runs the same on the CPU (fp32, bf16, fp16), as a dry run without a GPU; `--no-train` runs
the sweep alone (its children need only the params stack, not pandas' or scikit-learn's train-stage outputs).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pipeline import backends, files, params
from pipeline.backends.base import refuse_precision
from pipeline.data.prepare import load_prepared, prepared_meta
from pipeline.errors import ChildError, ParamsError
from pipeline.measure import zygote
from pipeline.probe import speedo, telemetry
from pipeline.measure.zygote import Zygotes
from pipeline.records import Measurement

log = logging.getLogger("gpu-check")


def available(frameworks: list[str]) -> list[str]:
    """The params' frameworks installed here (the GPU box may have PyTorch only); the others are said, not run."""
    have = [fw for fw in frameworks if importlib.util.find_spec(backends.about(fw).module) is not None]
    for fw in sorted(set(frameworks) - set(have)):
        log.info("%s: not installed here, skipped", fw)
    return have


def runnable(precisions: list[str], gpu: str, capability: tuple[int, int]) -> list[str]:
    """The precisions this GPU really runs (the backends' own rule: tf32 and bf16 need Ampere or newer); the others
    are skipped and said, so the default list still surveys a T4 or V100 in fp32."""
    kept = []
    for prec in precisions:
        try:
            refuse_precision(prec, gpu, capability)
            kept.append(prec)
        except ParamsError as e:
            log.info("skipped: %s", str(e).removeprefix("params.yaml: "))
    if not kept:
        raise ParamsError(f"gpu-check: --precisions {','.join(precisions)}: none of them runs on this {gpu} "
                          f"(compute capability {capability[0]}.{capability[1]}); use fp32")
    return kept


def overridden(raw: dict, **dotted: Any) -> dict:
    """params.yaml's mapping with dotted keys replaced, validated: a value the schema refuses stops here, in one
    line naming the key."""
    raw = params.override(raw, **dotted)
    params.parse(raw)
    return raw


def write(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_times(params_path: Path, data: Path, cells: list[tuple[str, str]], work: Path) -> list[dict]:
    """Each train cell through the train stage's own script, timed end to end (process start included)."""
    out = []
    for fw, model in cells:
        run = work / "runs" / f"{fw}-{model}"
        t0 = time.perf_counter()
        got = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--framework", fw, "--model", model,
                              "--data", str(data), "--out", str(run), "--model-out", str(work / "models" / fw),
                              "--params", str(params_path)], stderr=subprocess.PIPE, text=True)
        if got.returncode:
            sys.stderr.write(got.stderr)
            raise ChildError(f"gpu-check: the train stage of {fw}-{model} failed (exit {got.returncode}); its "
                             "error is printed above")
        m = files.read_json(run / "metrics.json", "train metrics")
        out.append({"stage": f"train@{fw}-{model}", "wall_s": time.perf_counter() - t0, "seeds": m["seeds"],
                    "time_to_target_s": m["time_to_target_s"], "test_acc": m["test_acc"],
                    "train_samples_per_s": m["train_samples_per_s"]})
        log.info("%s: %.1f s, %d seed%s", out[-1]["stage"], out[-1]["wall_s"], m["seeds"], "s" * (m["seeds"] > 1))
    return out


def point(m: Measurement, precision: str, batch: int, flops: dict[str, int]) -> dict:
    """One child's row for the table: rates, the speedometer around it, and the training rate's share of it."""
    ok = m.status == "ok"
    train = m.rate("train") if ok else float("nan")
    calib = m.own_calib_gflops()
    return {"framework": m.framework, "model": m.model, "precision": precision, "batch_size": batch,
            "variant": m.variant, "train_samples_per_s": train,
            "train_step_ms": m.train.step_time_ms_median if ok else float("nan"),
            "train_cv_pct": m.train.cv_pct if ok else float("nan"),
            "infer_samples_per_s": m.rate("infer") if ok else float("nan"),
            "pct_of_device": speedo.share_pct(train, "train", flops[m.model], calib),
            "speedometer_gflops": calib, "mem_peak_mb": m.train_mem_peak_mb, "first_step_s": m.first_step_s,
            "sm_clock_mhz": m.gpu_sm_clock_mhz_after, "gpu_processes": m.gpu_processes_after,
            "child_wall_s": m.child_wall_s, "child_setup_s": m.child_setup_s, "device": m.device, "status": m.status,
            "note": "" if ok else f"{m.status}: {m.reason}"}


def sweep(raw: dict, p: params.Params, meta: dict[str, np.ndarray], data: Path, frameworks: list[str],
          precisions: list[str], batch_sizes: list[int], variants: list[str], device: str, work: Path,
          via: Zygotes) -> list[dict]:
    """One fresh bench child per framework, precision and batch size (variants kind), in that nesting order,
    started `via` zygotes as the bench starts them."""
    flops = {m: net.flops_per_sample() for m, (net, _) in params.networks(
        p, tuple(prepared_meta(meta)["image_shape"]), len(meta["classes"])).items()}
    threads = backends.cpu_threads(p.threads)
    rows = []
    for prec in precisions:
        path = write(overridden(raw, device=device, precision=prec, **{"bench.variants": variants}),
                     work / f"params-{prec}.yaml")
        for fw in frameworks:
            for bs in batch_sizes:
                got = zygote.spawn(via, data, path, fw, "variants", threads, f"{fw} {prec} batch {bs}", bs)
                rows += [point(m, prec, bs, flops) for m in got]
                log.info("%s %s batch %d: %s", fw, prec, bs, ", ".join(
                    f"{r['model']} {r['variant']} {r['train_samples_per_s']:,.0f} samples/s"
                    for r in rows[-len(got):] if not r["note"]))
    return rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/prepared.npz"), help="prepared .npz (dvc repro prepare)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, help="also write every row here as JSON")
    ap.add_argument("--batch-sizes", default="128,512,2048", help="training batch sizes (comma-separated)")
    ap.add_argument("--precisions", default="fp32,tf32,bf16,fp16", help="fp32, tf32, bf16, fp16 (comma-separated)")
    ap.add_argument("--variants", default="channels_last", help="bench.variants names beside each default")
    ap.add_argument("--cpu", action="store_true", help="a dry run on the CPU (tf32 is a GPU format: refused)")
    ap.add_argument("--no-train", action="store_true", help="the sweep only, without the train stages' times")
    a = ap.parse_args(argv)
    device = "cpu" if a.cpu else "cuda"
    if not a.cpu and not _cuda():
        raise ParamsError("gpu-check: NVML sees no NVIDIA GPU here (or CUDA_VISIBLE_DEVICES hides it); run it on a "
                          "GPU machine (or add --cpu for a dry run of the same steps)")
    p = params.load(a.params)  # a missing or bad params file: one line naming it
    raw = yaml.safe_load(a.params.read_text())
    try:
        batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    except ValueError:
        raise ParamsError(f"gpu-check: --batch-sizes {a.batch_sizes!r}: expected integers, e.g. 128,512") from None
    precisions, variants = a.precisions.split(","), [v for v in a.variants.split(",") if v]
    if a.cpu and "tf32" in precisions:
        raise ParamsError("gpu-check: --precisions tf32 runs only on a CUDA GPU; drop it with --cpu")
    if not a.cpu:
        precisions = runnable(precisions, *_gpu())
    for prec in precisions:  # every setting the sweep will use is checked before anything runs
        overridden(raw, device=device, precision=prec, **{"bench.variants": variants})
    meta = load_prepared(a.data)  # a missing or bad file: one line naming it, before anything runs
    frameworks = available(p.frameworks)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, Zygotes(p.bench.fork, device == "cuda") as via:
        work = Path(tmp)
        base = write(overridden(raw, device=device), work / "params.yaml")
        stages = stage_times(base, a.data, [] if a.no_train else [(fw, m) for fw in frameworks for m in p.models],
                             work)
        rows = sweep(raw, p, meta, a.data, frameworks, precisions, batch_sizes, variants, device, work, via)
    print(summary(stages, rows))
    if a.out:
        files.write_json(a.out, {"stages": stages, "points": rows})


def _cuda() -> bool:
    return telemetry.gpu_count() > 0  # NVML: no framework imported for --help or the CPU checks


def _gpu() -> tuple[str, tuple[int, int]]:
    """The name and compute capability of the GPU the children will use (cuda:0, as the backends use)."""
    return telemetry.used_device() or ("no GPU", (0, 0))


def summary(stages: list[dict], rows: list[dict]) -> str:
    """The printout: stage times, the speedometer, then the sweep by precision, batch size and variant (a variant
    a model or framework lacks is one line below it, not a row per point)."""
    table = pd.DataFrame(rows)
    readings = table.groupby(["framework", "precision"], sort=False)["speedometer_gflops"].median()
    cols = ["framework", "model", "precision", "batch_size", "variant", "train_samples_per_s", "train_cv_pct",
            "infer_samples_per_s", "pct_of_device", "mem_peak_mb", "first_step_s", "note"]
    shown = table[table["status"] != "absent"][cols].astype({"mem_peak_mb": object}).fillna({"mem_peak_mb": "n/a"})
    absent = sorted({f"{r['framework']} {r['model']} {r['variant']}: {r['note'][len('absent: '):]}"
                     for r in rows if r["status"] == "absent"})
    fmt = lambda v: f"{v:,.1f}"  # noqa: E731
    shared = int((table["gpu_processes"] > 1).sum())  # NaN (a CPU, processes not visible) is not shared
    return "\n\n".join([
        "Stage times (train stage, process start included)\n"
        + (pd.DataFrame(stages).to_string(index=False, float_format=fmt) if stages else "not run (--no-train)"),
        f"Device speedometer (GFLOP/s, median per framework and precision) on {table['device'].iloc[0]}\n"
        + readings.to_string(float_format=fmt),
        "Training and inference samples/s; train CV: their spread over the child's timed repeats (%); % of device: "
        "training FLOPs/s over the speedometer at that precision\n"
        + shown.to_string(index=False, float_format=fmt), *(["Not measured: " + "; ".join(absent)] if absent else []),
        *([f"Shared GPU: other processes computed on it as {shared} of {len(table)} rows' children ended; their rates "
           "are the share this sweep got"] if shared else [])])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
