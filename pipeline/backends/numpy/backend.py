"""The contract in plain NumPy: BLAS threads via threadpoolctl, a thread-pool loader."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import threadpoolctl

from pipeline.backends.base import Backend, Feed, Step, Variant, refuse_no_gpu, refuse_precision
from pipeline.backends.numpy.layers import Net, Optimizer, SoftmaxCrossEntropy
from pipeline.errors import ParamsError
from pipeline.probe import telemetry
from pipeline.spec import ModelSpec, Optim


class NumpyBackend(Backend):
    NAME = "numpy"
    MODEL_SUFFIX = ".npz"
    DEFAULT = "numpy"
    VARIANTS = {"numpy": Variant("hand-written forward and backward passes, im2col convolution, one BLAS matmul "
                                 "per layer")}
    ABSENT = {name: "the NumPy reference has one way to run" for name in ("compile", "channels_last",
                                                                          "cuda_graphs", "fit")}

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        if telemetry.run_device(device) == "cuda":  # beside frameworks on a GPU it would be no comparison
            refuse_no_gpu(device, "the numpy backend", "it runs on the CPU only")
        refuse_precision(precision, "cpu")
        if precision != "fp32":  # its layers compute in float32 only (NumPy has no bfloat16 type)
            raise ParamsError(f"params.yaml: precision: {precision} is not available in the numpy backend (fp32 "
                              "only); use fp32 or drop numpy from frameworks")
        if threads:  # the BLAS pool is NumPy's only parallelism; limit it for the whole process
            threadpoolctl.threadpool_limits(threads, user_api="blas")
        self.rng = np.random.default_rng(seed)  # dropout masks; reseed() re-seeds it in place for built networks
        blas = [b for b in threadpoolctl.threadpool_info() if b["user_api"] == "blas"]
        self.info = {"framework": self.NAME, "framework_version": np.__version__, "device": "cpu",
                     "blas": ", ".join(f"{b['internal_api']} {b['version']}" for b in blas),
                     "intra_op_threads": max(b["num_threads"] for b in blas), "inter_op_threads": 1,
                     "precision": "fp32"}

    def reseed(self, seed: int) -> None:
        self.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Net:
        # copies: training must not change the caller's arrays
        return Net(spec, [np.array(w, np.float32) for w in weights], self.rng)

    def get_weights(self, model: Net, spec: ModelSpec) -> list[np.ndarray]:
        return [p.copy() for p in model.params]

    def put(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(x, np.float32), y.astype(np.int64)

    def take(self, data: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return data[0][idx], data[1][idx]

    def array(self, a: np.ndarray) -> np.ndarray:
        return a

    def make_step(self, model: Net, optim: Optim, variant: str) -> Step:
        opt, loss_fn = Optimizer(optim, model.params), SoftmaxCrossEntropy()

        def step(xb: np.ndarray, yb: np.ndarray, keep: tuple | None = None) -> tuple[float, int]:
            logits = model.forward(xb, train=True, keep=keep)
            loss = loss_fn.forward(logits, yb)
            opt.update(model.params, model.backward(loss_fn.backward()))
            return loss * len(yb), int((logits.argmax(axis=1) == yb).sum())

        def set_lr(lr: float) -> None:
            opt.lr = lr
        return Step(step, opt, set_lr)

    def make_predict(self, model: Net, variant: str) -> Callable[[Any], Any]:
        return lambda xb: model.forward(xb, train=False)

    def numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t)

    def sync(self, out: Any = None) -> None:
        """Nothing is asynchronous: a NumPy call returns when its work is done."""

    def save(self, model: Net, path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary path
            np.savez(f, *model.params)

    def load(self, spec: ModelSpec, path: Path) -> Net:
        with np.load(path, allow_pickle=False) as z:
            return self.build(spec, [z[f"arr_{i}"] for i in range(len(z.files))])

    def loader_settings(self, workers: list[int]) -> list[int | str]:
        return list(workers)

    def make_loader(self, feed: Feed, workers: int | str) -> Iterator[tuple[Any, Any]]:
        """Endless shuffled batches, per-sample work in Python as in torch's Dataset. With workers > 0, a pool of
        that many threads prepares `prefetch` batches per worker ahead. Threads, not processes: NumPy releases the
        GIL only inside its larger kernels, so per-sample work mostly serialises, and the sweep shows what that
        costs."""
        rng = np.random.default_rng(feed.seed)
        images, labels, shift, bs = feed.images, feed.labels, feed.shift, feed.batch_size
        h, w = images.shape[1:3]
        scale, offset = np.float32(1 / (255.0 * feed.std)), np.float32(feed.mean / feed.std)

        def one(i: int, dy: int, dx: int) -> np.ndarray:  # uint8 (H, W) -> normalised, shifted float32 (H, W, 1)
            x = images[i].astype(np.float32) * scale - offset
            if shift:
                x = np.pad(x, shift)[dy:dy + h, dx:dx + w]
            return x[..., None]

        def batch(idx: np.ndarray, moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.stack([one(i, dy, dx) for i, (dy, dx) in zip(idx, moves)]), labels[idx].astype(np.int64)

        def plan() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # order and shifts drawn here: same for any workers
            while True:
                perm = rng.permutation(len(labels))
                for i in range(0, len(perm) - bs + 1, bs):
                    yield perm[i:i + bs], rng.integers(0, 2 * shift + 1, (bs, 2))

        if not workers:
            for idx, moves in plan():
                yield batch(idx, moves)
        with ThreadPoolExecutor(int(workers)) as pool:
            ahead, todo = [], plan()
            while True:
                while len(ahead) < max(1, feed.prefetch) * int(workers):
                    ahead.append(pool.submit(batch, *next(todo)))
                yield ahead.pop(0).result()


BACKEND = NumpyBackend
