"""One data-parallel worker: its shard of every global batch, timed steps, all-reduce alone.

    torchrun --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint localhost:29400 \\
        -m pipeline.scale.worker --framework torch --models mlp cnn --threads 1 --data data/prepared.npz --out DIR
    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 0}}' \\
        python -m pipeline.scale.worker --framework tensorflow ...   (one per worker)

Every worker starts from the same initial weights (spec.init_weights, the seed) and walks the same global batch
order (the train stage's first epoch, cycled); worker r of N takes rows [r*B/N, (r+1)*B/N) of every global batch of
B = train.batch_size, so 1 and N workers do the same maths. Each worker writes its phase to `<out>/rank<r>.phase`
(how the launcher names a worker that hangs); rank 0 writes `<out>/result.json` last. On a GPU rank 0 also reads
the device's speedometer before its first model and after its last (calibrated()), as a bench child does; on a CPU
the launcher's GEMM around the launch is the speedometer. With --dump, every worker also writes its weights after
the last step (the equivalence test compares 1 and N workers with them).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import files, params
from pipeline.backends.base import check_precision, check_threads
from pipeline.data.prepare import load_prepared, normalise, prepared_meta
from pipeline.backends import FRAMEWORKS, engine_class, scalable
from pipeline.probe import speedo
from pipeline.spec import batch_order, init_weights


def shard_order(n: int, seed: int, batch: int, world: int, rank: int) -> np.ndarray:
    """This worker's sample indices for one pass: its slice of each full global batch of the first epoch's order."""
    order = batch_order(n, seed, 0)
    full = order[:n // batch * batch].reshape(-1, batch)
    part = batch // world
    return full[:, rank * part:(rank + 1) * part].reshape(-1)


def measure(eng: object, net: object, optim: object, x: object, y: object, p: params.Params, warmup: int,
            steps: int, repeats: int, out: Path, dump: bool) -> dict:
    """One model on this worker, on its shards (`x`, `y`: one pass, on the device): the first step (tracing
    included), `warmup` steps, `repeats` x `steps` timed steps, then the all-reduce of one step's gradients alone.
    The figures are rank 0's; every worker runs this."""
    batch, shard = p.train.batch_size, p.train.batch_size // eng.world
    per_pass = len(y) // shard

    def batches(start: int, k: int):  # the global steps start .. start+k-1, this worker's shard of each
        for i in range(start, start + k):
            j = i % per_pass * shard
            yield x[j:j + shard], y[j:j + shard]
    model = eng.build(net, init_weights(net, p.seed))
    step = eng.make_step(model, optim, batch)
    t0 = time.perf_counter()
    loss_first = eng.loss_sum(step(*next(batches(0, 1))))  # the global batch's loss; waits for the step
    first_s = time.perf_counter() - t0
    res = None
    for xb, yb in batches(1, warmup - 1):
        res = step(xb, yb)
    eng.be.sync(res)
    per_step = []
    for k in range(repeats):  # the launch's figure is the median repeat: a transient hiccup does not make it
        eng.barrier()
        t0 = time.perf_counter()
        for xb, yb in batches(warmup + k * steps, steps):
            res = step(xb, yb)
        eng.be.sync(res)
        eng.barrier()  # the step time is the slowest worker's: all-reduce keeps them in lockstep
        per_step.append((time.perf_counter() - t0) / steps)
    step_s = float(np.median(per_step))
    reduce_s = eng.allreduce_s(model, p.scale.allreduce_calls)
    if dump:
        with files.atomic_path(out / f"weights.{net.name}.rank{eng.rank}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, *eng.weights(model, net))
    return {"model": net.name, "global_batch": batch, "shard_batch": shard, "steps": steps, "first_step_s": first_s,
            "loss_first": loss_first, "step_ms": 1e3 * step_s, "samples_per_s": batch / step_s,
            "step_ms_min": 1e3 * min(per_step), "step_ms_max": 1e3 * max(per_step), "repeats": repeats,
            "allreduce_ms": 1e3 * reduce_s, "comm_share": reduce_s / step_s}


def calibrated(be: object, rank: int, threads: int, work: Callable[[], list[dict]]) -> list[dict]:
    """`work`'s rows, on a GPU with rank 0's device speedometer read before and after it (its matmul at the run's
    precision: a host GEMM on the GPU box misreads the device and flagged 5 of 9 launches on an H200). On a CPU,
    and on other ranks, the rows as they are: the launcher reads the GEMM around the launch."""
    if rank != 0 or be.speedometer() == speedo.DESCRIPTION:
        return work()
    before = be.calibrate(threads)
    rows = work()
    after = be.calibrate(threads)
    return [r | {"calib_before_gflops": before, "calib_after_gflops": after, "speedometer": be.speedometer()}
            for r in rows]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", required=True, choices=scalable(list(FRAMEWORKS)))
    ap.add_argument("--models", required=True, nargs="+")
    ap.add_argument("--threads", type=int, required=True, help="intra-op threads of this worker")
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, required=True, help="directory for phases and rank 0's result.json")
    ap.add_argument("--warmup", type=int, help="instead of scale.warmup")
    ap.add_argument("--steps", type=int, help="instead of scale.steps")
    ap.add_argument("--repeats", type=int, help="instead of scale.repeats")
    ap.add_argument("--dump", action="store_true", help="write every worker's weights after the last step")
    a = ap.parse_args(argv)
    p = params.load(a.params)
    warmup, steps, repeats = a.warmup or p.scale.warmup, a.steps or p.scale.steps, a.repeats or p.scale.repeats
    eng = engine_class(a.framework)(a.threads, p.device, p.seed, p.precision)
    phase = lambda what: files.write_text(a.out / f"rank{eng.rank}.phase", f"{what} {os.getpid()}\n")  # noqa: E731
    phase("started")
    check_threads(eng.be.info, a.threads)
    check_precision(eng.be.info, p.precision)
    raw = load_prepared(a.data)
    shape, classes = tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"])
    idx = shard_order(len(raw["y_train"]), p.seed, p.train.batch_size, eng.world, eng.rank)
    x, y = eng.be.take(eng.be.put(normalise(raw["x_train"], raw["mean"], raw["std"]), raw["y_train"]), idx)

    def models() -> list[dict]:
        rows = []
        for model in a.models:
            phase(f"measuring {model}")
            rows.append(measure(eng, params.model_spec(p, model, shape, classes), params.optim(p, model), x, y, p,
                                warmup, steps, repeats, a.out, a.dump))
        return rows
    rows = calibrated(eng.be, eng.rank, a.threads, models)
    phase("done")
    if eng.rank == 0:
        files.write_json(a.out / "result.json", [{
            "framework": a.framework, "workers": eng.world, "threads_per_worker": a.threads, "comm": eng.comm,
            "device": eng.be.info["device"], "framework_version": eng.be.info["framework_version"],
            "precision": eng.be.info["precision"], **r}
            for r in rows])
    eng.barrier()  # no worker leaves (closing its end of the collectives) before rank 0 has written
    eng.close()


if __name__ == "__main__":
    files.run(main)
