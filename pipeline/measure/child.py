"""One benchmark child: a fresh process measuring one framework, and how it is spawned.

    python -m pipeline.measure.child --framework torch --kind round --threads 2 --data data/prepared.npz

The child sets its backend up once, checks it really runs on the threads asked for, runs the calibration GEMM,
measures every model (training on the train stage's batches, inference at each batch size, batch-1 latency) in each
variant, runs the GEMM again and prints its measurements as one JSON line. The bench (bench.py) starts children
with zygote.spawn, forked from a zygote that imported the framework once or as above; a fresh process is the unit
of every verdict, so within-process spreads are diagnostics only.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import psutil

from pipeline import backends, files, params
from pipeline.backends.base import Backend, check_precision, check_threads
from pipeline.data.prepare import load_prepared, normalise, prepared_meta
from pipeline.errors import Unavailable
from pipeline.measure import units
from pipeline.measure.units import Unit
from pipeline.probe import speedo, telemetry, timing
from pipeline.params import Bench
from pipeline.records import Measurement
from pipeline.spec import Conv, Dropout, ModelSpec, Optim, batch_order, init_weights

KINDS = ("round", "variants", "threads")  # a round child runs the default variant; variants runs all of them
# Errors that mean "this machine cannot run the variant" (no C compiler for inductor, no XLA device). Any other
# failure is a bug and fails the stage.
UNAVAILABLE = ("InvalidCxxCompiler", "C compiler", "cc is not found", "No registered 'XlaLaunch'",
               "Could not find compiler", "could not find registered platform")


def measure(be: Backend, spec: ModelSpec, optim: Optim, data: object, n: int, cfg: Bench, batch_size: int,
            seed: int, variant: str) -> Measurement:
    """One model, one variant, in this process, each part in turn (the variants child: a diagnostic beside the
    default in the same process): training on the train stage's batches (whole training set, its batch order and
    size), inference at each batch size, batch-1 latency."""
    if variant not in (be.DEFAULT, "fit"):  # Keras fit has no step of its own to compare (its test: equivalence)
        wrong = same_steps(be, spec, optim, data, n, batch_size, seed, variant)
        if wrong:
            return Measurement(spec.name, variant, status="wrong", reason=wrong)
    be.reset_memory_peak()
    model = be.build(spec, init_weights(spec, seed))
    first, per_step = be.train_timings(model, optim, data, batch_order(n, seed, 0), variant, batch_size,
                                       cfg.warmup, cfg.steps, cfg.repeats, cfg.min_repeat_s)
    m = Measurement(spec.name, variant, first_step_s=first, train=timing.rates(per_step, batch_size),
                    train_mem_peak_mb=be.memory_peak_mb())
    predict = be.make_predict(model, variant)
    for bs in cfg.infer_batch_sizes:
        xb = be.take(data, np.arange(bs) % n)[0]
        per_call = timing.repeat(lambda k, xb=xb: [predict(xb) for _ in range(k)][-1], cfg.warmup, cfg.steps,
                                 cfg.repeats, be.sync, cfg.min_repeat_s)
        m.infer[bs] = timing.rates(per_call, bs)
    latency(be, predict, data, cfg, m)
    return m


# How far a variant's loss may sit from the default's at each precision: a few roundings of the format's mantissa
# (fp32: reordered sums, 2^-23 each, over long reductions; tf32 and fp16 keep 11 bits, bf16 8).
LOSS_RTOL = {"fp32": 1e-4, "tf32": 4 * 2.0 ** -11, "bf16": 4 * 2.0 ** -8, "fp16": 4 * 2.0 ** -11}


def same_steps(be: Backend, spec: ModelSpec, optim: Optim, data: object, n: int, batch_size: int, seed: int,
               variant: str) -> str:
    """Why `variant` must not be timed ("" when it may): from the same weights and batch, its first two steps'
    losses (the first checks the forward pass, the second the update) must equal the default variant's within
    LOSS_RTOL. Dropout is left out of this check only, since compiled code draws its masks differently."""
    plain = ModelSpec(spec.name, spec.in_shape, spec.classes,
                      tuple(layer for layer in spec.layers if not isinstance(layer, Dropout)))
    order = batch_order(n, seed, 0)
    batches = [be.take(data, order[np.arange(i * batch_size, (i + 1) * batch_size) % n]) for i in (0, 1)]
    losses = {}
    for v in (be.DEFAULT, variant):
        step = be.make_step(be.build(plain, init_weights(plain, seed)), optim, v)
        losses[v] = [float(be.numpy(step(*b)[0])) / batch_size for b in batches]
    rtol = LOSS_RTOL[be.info.get("precision", "fp32")]
    for i, (a, b) in enumerate(zip(losses[be.DEFAULT], losses[variant])):
        if not abs(b - a) <= rtol * abs(a):
            return (f"step {i + 1}'s loss {b:.6g} differs from the default variant's {a:.6g} by more than "
                    f"{rtol:.2g} (relative): not timed")
    return ""


NO_CONV = "no convolutions in this network: a layout variant has nothing to change"


def applies(be: Backend, spec: ModelSpec, variant: str) -> bool:
    """A layout variant (channels_last) changes nothing in a network without convolutions: not measured there."""
    return not be.VARIANTS[variant].conv_only or any(isinstance(layer, Conv) for layer in spec.layers)


def measure_or_unsupported(be: Backend, model: str, variant: str, run: Callable[[], Measurement]) -> Measurement:
    """run() for a non-default variant; a known "not on this machine" failure becomes an unsupported row."""
    try:
        return run()
    except Unavailable as e:  # the backend itself says this device cannot run it
        return Measurement(model, variant, status="unsupported", reason=str(e))
    except Exception as e:  # noqa: BLE001  # re-raised below unless it is a known unavailability
        text = f"{type(e).__name__}: {e}"
        if variant == be.DEFAULT or not any(u in text for u in UNAVAILABLE):
            raise
        return Measurement(model, variant, status="unsupported", reason=text.strip().splitlines()[0][:300])


def timed(run: Callable[[], Measurement]) -> Measurement:
    """run()'s measurement with the seconds it took (`measure_s`): where a child's time goes."""
    t0 = time.perf_counter()
    m = run()
    m.measure_s = time.perf_counter() - t0
    return m


def interleaved(be: Backend, specs: dict[str, tuple[ModelSpec, Optim]], data: object, n: int, cfg: Bench,
                batch_size: int, seed: int, threads: int, run_level: float) -> tuple[list[Measurement], float]:
    """A round child's measurements: each model built, its first step timed apart (tracing, compilation), its
    training and its inference at each batch size warmed up as units; then every unit's repeats interleaved, each
    beside a speedometer reading (units.py); each figure from its calm repeats. Returns the rows and the seconds
    the readings took."""
    made, todo = [], []
    for name, (spec, optim) in specs.items():
        t0 = time.perf_counter()
        be.reset_memory_peak()
        model = be.build(spec, init_weights(spec, seed))
        step = be.train_runner(model, optim, data, batch_order(n, seed, 0), be.DEFAULT, batch_size)
        first = time.perf_counter()
        be.sync(step(1))
        row = Measurement(name, be.DEFAULT, first_step_s=time.perf_counter() - first)
        train = Unit(name, "train", batch_size, step, calls=cfg.steps)
        units.size(train, cfg.warmup - 1, cfg.min_repeat_s, be.sync, time.perf_counter)
        row.train_mem_peak_mb = be.memory_peak_mb()
        predict = be.make_predict(model, be.DEFAULT)
        # predict and xb bound now: a name looked up when the unit runs would be the last model's
        infer = [Unit(name, "infer", bs, lambda k, xb=be.take(data, np.arange(bs) % n)[0], predict=predict: [
            predict(xb) for _ in range(k)][-1], calls=cfg.steps) for bs in cfg.infer_batch_sizes]
        for u in infer:
            units.size(u, cfg.warmup, cfg.min_repeat_s, be.sync, time.perf_counter)
        made.append((row, train, infer, predict, time.perf_counter() - t0))
        todo += [train, *infer]
    spent = [0.0]  # on the readings: the speedometer's share of the child's time

    def reading() -> float:
        t = time.perf_counter()
        got = be.reading(threads)
        spent[0] += time.perf_counter() - t
        return got
    t0 = time.perf_counter()
    readings = units.interleave(todo, reading, be.sync, cfg.repeats, cfg.max_drift, cfg.repeat_max_s, run_level)
    shared = (time.perf_counter() - t0 - spent[0]) / len(made)  # the repeats' time, shared by the models
    level = units.calm_level(readings, run_level, cfg.max_drift)
    for row, train, infer, predict, own in made:
        t0 = time.perf_counter()
        row.train = units.rates(train, level, cfg.max_drift, cfg.repeats)
        row.infer = {u.items: units.rates(u, level, cfg.max_drift, cfg.repeats) for u in infer}
        row.samples = {u.phase + ("" if u.phase == "train" else str(u.items)): {
            "per_call_s": u.per_call_s, "before_gflops": u.before, "after_gflops": u.after} for u in (train, *infer)}
        latency(be, predict, data, cfg, row)
        row.calm_level_gflops, row.measure_s = level, own + shared + time.perf_counter() - t0
    return [m[0] for m in made], spent[0]


def latency(be: Backend, predict: Callable[[Any], Any], data: object, cfg: Bench, row: Measurement) -> None:
    """Batch-1 inference latency, p50/p95/p99 over bench.latency_calls single calls (each synchronised)."""
    x1 = be.take(data, np.arange(1))[0]
    lat = timing.latencies(lambda: predict(x1), cfg.warmup, cfg.latency_calls, be.sync) * 1e3
    row.latency_ms_p50, row.latency_ms_p95, row.latency_ms_p99 = (float(q) for q in np.percentile(lat, [50, 95, 99]))


def child(be: Backend, specs: dict[str, tuple[ModelSpec, Optim]], data: object, n: int, cfg: Bench,
          batch_size: int, seed: int, threads: int, variants: list[str], asked: Sequence[str] = (),
          run_level: float = 0.0) -> list[Measurement]:
    """What one fresh process measures, read by the backend's speedometer (the CPU GEMM, or a matmul on its GPU,
    with NVML telemetry around the child there): a round or threads child, the default variant's interleaved units
    (interleaved: `run_level`, the run's calm speed so far); a variants child, each model x variant in turn between
    two calibrations (a within-process diagnostic). A name in `asked` (bench.variants) this framework has no variant
    for becomes an `absent` row saying why."""
    gpu = be.speedometer() != speedo.DESCRIPTION
    tel0 = telemetry.read() if gpu else {}
    t0 = time.perf_counter()
    host0 = speedo.gemm_gflops(threads, seconds=speedo.HOST_SECONDS) if gpu else math.nan
    before = be.calibrate(threads, cfg.calib_s)  # the run's common speedometer, the denominator of every "% of peak"
    calib_s = time.perf_counter() - t0
    if variants == [be.DEFAULT] and not asked:
        rows, reading_s = interleaved(be, specs, data, n, cfg, batch_size, seed, threads, run_level)
        calib_s += reading_s
    else:
        rows = [timed(lambda m=m, v=v: measure_or_unsupported(be, m, v, lambda: measure(
                    be, specs[m][0], specs[m][1], data, n, cfg, batch_size, seed, v)))
                if applies(be, specs[m][0], v) else Measurement(m, v, status="absent", reason=NO_CONV)
                for m in specs for v in variants]
        rows += [Measurement(m, name, status="absent", reason=be.ABSENT[name]) for m in specs for name in asked
                 if name in be.ABSENT]
    t0 = time.perf_counter()
    after = be.calibrate(threads, cfg.calib_s)
    calib_s += time.perf_counter() - t0
    host1 = speedo.gemm_gflops(threads, seconds=speedo.HOST_SECONDS) if gpu else math.nan
    tel1 = telemetry.read() if gpu else {}
    for r in rows:
        r.calib_before_gflops, r.calib_after_gflops, r.drift = before, after, speedo.drift(before, after)
        r.host_calib_before_gflops, r.host_calib_after_gflops, r.child_calib_s = host0, host1, calib_s
        r.speedometer = be.speedometer()
        if gpu:
            r.gpu_sm_clock_mhz_before, r.gpu_sm_clock_mhz_after = tel0["sm_clock_mhz"], tel1["sm_clock_mhz"]
            r.gpu_temperature_c_after, r.gpu_power_w_after = tel1["temperature_c"], tel1["power_w"]
            r.gpu_memory_used_mb_after, r.gpu_processes_after = tel1["memory_used_mb"], tel1["processes"]
    return rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", required=True, choices=backends.FRAMEWORKS)
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--batch-size", type=int, help="training batch size instead of train.batch_size (bench.vary)")
    ap.add_argument("--launched", type=float, help="time.time() when the parent launched it (child_setup_s)")
    ap.add_argument("--calm-gflops", type=float, default=0.0, help="the run's calm speedometer level so far")
    a = ap.parse_args(argv)
    p = params.load(a.params)
    raw = load_prepared(a.data)
    shape, classes = tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"])
    be = backends.create(a.framework, a.threads, p.device, p.seed, p.precision)
    checked = check_threads(be.info, a.threads)
    precision = check_precision(be.info, p.precision)["precision"]  # refuses to measure what was not asked
    specs = params.networks(p, shape, classes)
    x, y = normalise(raw["x_train"], raw["mean"], raw["std"]), raw["y_train"]
    variants = be.variants(p.bench.variants) if a.kind == "variants" else [be.DEFAULT]
    data = be.put(x, y)  # on the device for the whole process
    # since launch (fork or exec): data, device, imports if exec'd. The process's own create_time is no substitute
    # by hand: Linux dates it from a boot time rounded to the second, 0.4 s off on the machine this was built on.
    setup = time.time() - (a.launched or psutil.Process().create_time())
    rows = child(be, specs, data, len(y), p.bench, a.batch_size or p.train.batch_size, p.seed, a.threads,
                 variants, p.bench.variants if a.kind == "variants" else (), a.calm_gflops)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    for r in rows:
        r.framework, r.framework_version, r.device = a.framework, be.info["framework_version"], be.info["device"]
        r.threads, r.intra_op_threads, r.inter_op_threads = a.threads, *checked.values()
        r.precision = precision
        r.peak_rss_mb, r.child_setup_s = rss, setup
        r.description = be.VARIANTS[r.variant].description if r.variant in be.VARIANTS else ""
    print(json.dumps([r.flat() for r in rows]))


if __name__ == "__main__":
    files.run(main, quiet_interrupt=True)  # Ctrl-C reaches the whole process group: the bench says it once
