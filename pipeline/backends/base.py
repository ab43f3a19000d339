"""The backend contract, and what is written once for every backend (batches, step timing).

A backend object is made once per process (`pipeline.backends.create`): its constructor applies the threads
(intra-op; inter-op 1), the device and the seed, and the object holds them, so nothing lives in module globals.
Thread pools are process-wide in every framework, which is why the object is made once per process and every
benchmark child is a fresh process. Stages and the loop only ever call what `Backend` lists, so they never branch on
the framework; a new backend subclasses it (`tests/test_backends.py` checks each one implements exactly the
contract). Arrays cross the contract as NumPy in canonical layouts (see spec.py); `Data` is whatever `put` returns
(the backend's device tensors) and is handed back to `take`.
"""
from __future__ import annotations

import itertools
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from pipeline.errors import ParamsError
from pipeline.probe import telemetry
from pipeline.probe import speedo
from pipeline.probe.timing import Clock, repeat
from pipeline.spec import ModelSpec, Optim

Data = Any   # (images, labels) on the backend's device, from put()
Model = Any  # the framework's model object, from build()


@dataclass(frozen=True)
class Variant:
    """One way to run training and inference, as the bench selects it from params."""
    description: str       # one line for the report
    asked_by: str = ""     # the bench.variants name that selects it (params.VARIANTS); "" = the default
    conv_only: bool = False  # a memory-layout change: a network without convolutions has nothing to change


@dataclass
class Step:
    """One optimizer update: step(x, y) -> (loss summed over the batch, correct count), unsynchronised.

    step(x, y, keep) applies the run's shared dropout masks instead of the framework's own draws: `keep` holds, per
    Dropout layer in order, a (batch, features) uint8 array of 0 and 1 on the device (spec.dropout_masks, through
    Backend.array); a kept unit is scaled by 1/(1-p), as inverted dropout does. The train stage passes them, so every
    framework drops the same units at every step and their trajectories agree up to rounding; the bench times the
    framework's own dropout (keep None)."""
    run: Callable[..., tuple[Any, Any]]
    optimizer: Any                    # the framework's optimizer object (tests inspect its state)
    set_lr: Callable[[float], None]   # the rate from the next call on (schedules; never retraces)
    scaler: Any = None                # PyTorch's fp16 loss scaler (TensorFlow's is its optimizer), else None

    def __call__(self, x: Any, y: Any, keep: Any = None) -> tuple[Any, Any]:
        return self.run(x, y) if keep is None else self.run(x, y, tuple(keep))


@dataclass(frozen=True)
class Feed:
    """What a data loader serves: shuffled, normalised, randomly shifted batches of uint8 (N, H, W) images."""
    images: np.ndarray
    labels: np.ndarray
    mean: float
    std: float
    batch_size: int
    shift: int                # random shift, pixels each way
    seed: int
    pin_memory: bool          # page-locked host batches (CUDA only)
    persistent_workers: bool  # keep worker processes across epochs
    prefetch: int             # batches prepared ahead per worker


def check_threads(info: dict, threads: int) -> dict:
    """The thread counts a child really runs with must be the ones asked for (intra-op `threads`, inter-op 1)."""
    got = (info["intra_op_threads"], info["inter_op_threads"])
    if got != (threads, 1):
        raise RuntimeError(f"{info['framework']} runs with {got[0]} intra-op / {got[1]} inter-op threads; "
                           f"asked for {threads} / 1")
    return {"intra_op_threads": got[0], "inter_op_threads": got[1]}


def check_precision(info: dict, precision: str) -> dict:
    """The precision a backend really runs with (read back from the framework) must be the one asked for: fp32
    with TF32 off, tf32 with it on, bf16 and fp16 with 16-bit compute (and TF32 off for what stays fp32)."""
    got = info["precision"]
    if got != precision:
        raise RuntimeError(f"{info['framework']} runs with precision {got}; asked for {precision}")
    return {"precision": got}


TENSOR_CORES_16 = (8, 0)  # compute capability of Ampere, the first NVIDIA GPUs with TF32 and bf16 tensor cores


def refuse_precision(precision: str, device: str, capability: tuple[int, int] | None = None) -> None:
    """Stop where `precision` cannot really run on `device` (a CUDA GPU of compute `capability`, or None off one).

    TF32 is a format of NVIDIA's tensor cores: off a GPU there is nothing to turn on. On a GPU older than Ampere
    (a T4 or V100: 7.x) the frameworks accept both switches anyway, and would run tf32 as plain fp32 and bf16
    emulated, so a run would be measured under a precision it never used.
    """
    if precision == "tf32" and capability is None:
        raise ParamsError(f"params.yaml: precision: tf32 runs only on a CUDA GPU (this backend runs on {device}); "
                          "use fp32 or bf16")
    if precision in ("tf32", "bf16") and capability is not None and tuple(capability) < TENSOR_CORES_16:
        raise ParamsError(f"params.yaml: precision: {precision} needs an NVIDIA GPU of compute capability 8.0 or "
                          f"newer (Ampere and later); this {device} is {capability[0]}.{capability[1]}: use fp32")


def refuse_no_gpu(device: str, framework: str, fix: str, built_for: str | None = None) -> None:
    """The run's device is CUDA (asked, or `auto` with a GPU visible to NVML: telemetry.run_device) and this
    framework sees no GPU. Every framework of a run uses one device, so it stops here, saying how to give it the
    GPU (`fix`; or, where the framework was built for a newer CUDA, `built_for`, than the driver runs, that), rather
    than be compared on the CPU with the others on the GPU."""
    if device == "cuda" and not telemetry.gpu_count():
        raise ParamsError("params.yaml: device: cuda, but no NVIDIA GPU is visible here (NVML, CUDA_VISIBLE_DEVICES); "
                          "set device: cpu or auto")
    # a driver runs every CUDA of its major version and older (minor-version compatibility), nothing newer
    driver = telemetry.driver_cuda() if built_for else None
    if driver and driver[0] < int(built_for.split(".")[0]):
        fix = (f"its build for CUDA {built_for} needs a driver for CUDA {built_for.split('.')[0]}, and this one runs "
               f"CUDA {driver[0]}.{driver[1]} at most (nvidia-smi): update the driver, or install a build for CUDA "
               f"{driver[0]} (README \"Install\")")
    why = "device: cuda" if device == "cuda" else "device: auto is cuda on this machine (NVML sees a GPU)"
    raise ParamsError(f"params.yaml: {why}, but {framework} sees no GPU: {fix}; or set device: cpu")


class Backend(ABC):
    NAME: ClassVar[str]                 # the framework name used in params.yaml and cell names
    MODEL_SUFFIX: ClassVar[str]         # file suffix of a saved model
    DEFAULT: ClassVar[str]              # the variant `train` uses: each framework's everyday path
    VARIANTS: ClassVar[dict[str, Variant]]
    ABSENT: ClassVar[dict[str, str]] = {}  # bench.variants names with no variant here, and why (for the report)
    # Modules the framework imports on first use, not at its own import: the bench's zygote imports them once, so
    # each forked child does not pay them again. Importing one must start nothing (no device, no thread pool).
    LAZY_IMPORTS: ClassVar[tuple[str, ...]] = ()
    info: dict                          # what the constructor really set: versions, device, thread counts

    @abstractmethod
    def __init__(self, threads: int, device: str, seed: int, precision: str):
        """Threads (intra-op, 0 = the framework's own default, which backends.create never passes: it gives every
        framework cpu_threads' one count; inter-op 1), device, RNG and precision (fp32 | tf32 | bf16 | fp16,
        params.PRECISIONS), before anything runs; a precision the device cannot do is a ParamsError."""

    @abstractmethod
    def reseed(self, seed: int) -> None:
        """Seed the framework's own RNG (dropout masks)."""

    @abstractmethod
    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Model:
        """The spec's network holding these canonical weights."""

    @abstractmethod
    def get_weights(self, model: Model, spec: ModelSpec) -> list[np.ndarray]:
        """The model's weights in canonical layout: a copy, which later updates leave as it is."""

    @abstractmethod
    def put(self, x: np.ndarray, y: np.ndarray) -> Data:
        """NHWC float32 images and int labels -> device tensors kept for the whole run."""

    @abstractmethod
    def take(self, data: Data, idx: np.ndarray) -> Data:
        """The samples at `idx`, as device tensors."""

    @abstractmethod
    def array(self, a: np.ndarray) -> Any:
        """A NumPy array on the backend's device, as it is (dtype and layout kept): the shared dropout masks."""

    @abstractmethod
    def make_step(self, model: Model, optim: Optim, variant: str) -> Step:
        """One optimizer update per call, in the given variant; called with masks (Step), the default variant
        drops the units they say instead of drawing its own."""

    @abstractmethod
    def make_predict(self, model: Model, variant: str) -> Callable[[Any], Any]:
        """predict(x) -> logits, inference mode."""

    @abstractmethod
    def numpy(self, t: Any) -> np.ndarray:
        """A framework tensor as a NumPy array."""

    @abstractmethod
    def sync(self, out: Any = None) -> None:
        """Wait until queued device work (that produced `out`) has finished, so a timer measures it."""

    @abstractmethod
    def save(self, model: Model, path: Path) -> None:
        """Write the trained model to `path` (raises OSError when the write fails)."""

    @abstractmethod
    def load(self, spec: ModelSpec, path: Path) -> Model:
        """Read a model written by save()."""

    @abstractmethod
    def loader_settings(self, workers: list[int]) -> list[int | str]:
        """The loader parallelism settings to sweep for these worker counts."""

    @abstractmethod
    def make_loader(self, feed: Feed, workers: int | str) -> Iterator[tuple[Any, Any]]:
        """An endless iterator of (x, y) device batches of `feed`, prepared with `workers` parallelism."""

    # ---- written once for every backend ----------------------------------------------------------------------

    def calibrate(self, threads: int, seconds: float = speedo.SECONDS) -> float:
        """The speedometer (GFLOP/s) over about `seconds`: on a CPU the NumPy GEMM every child runs alike; a backend
        on a GPU overrides this with a matmul on its device at its precision."""
        return speedo.gemm_gflops(threads, seconds=seconds)

    def reading(self, threads: int) -> float:
        """A short speedometer reading (GFLOP/s) between two timed repeats, in the framework's own kernels and thread
        pool: another library's pool (NumPy's BLAS) keeps its threads spinning after each call, which would slow
        the repeat that follows. On a GPU, the device matmul of calibrate()."""
        return self.calibrate(threads, speedo.READING_S)

    def speedometer(self) -> str:
        """What calibrate() measures, in words for the report."""
        return speedo.DESCRIPTION

    def reset_memory_peak(self) -> None:
        """Start a new device-memory peak (a GPU backend overrides this; a CPU has no such count)."""

    def memory_peak_mb(self) -> float:
        """Device memory allocated at its peak since reset_memory_peak (MiB; the resident data included); NaN on
        a CPU, where the frameworks keep no allocator statistics (peak_rss_mb is the process's whole figure)."""
        return math.nan

    def variants(self, asked: list[str]) -> list[str]:
        """The variants a variants child measures for bench.variants: DEFAULT first (the in-process reference),
        then this backend's variant for each name asked, in the backend's order. A name this framework has no
        variant for is in ABSENT, with the reason the report prints."""
        return [self.DEFAULT] + [n for n, v in self.VARIANTS.items() if v.asked_by and v.asked_by in asked]

    def batches(self, data: Data, order: np.ndarray, batch_size: int) -> Iterator[tuple[Any, Any]]:
        """One epoch's full batches in `order`: one gather into contiguous memory, then slices (views in PyTorch).

        Full batches only: a last, smaller batch would change shapes (TensorFlow would retrace into a
        shape-generic graph) and weigh its samples more. Every backend drops the same few samples, a different few
        each epoch.
        """
        if len(order) < batch_size:  # no full batch at all: training would divide by zero, the bench spin forever
            raise ParamsError(f"params.yaml: train.batch_size: {batch_size} is more than the {len(order)} training "
                              "images; lower it")
        full = len(order) // batch_size * batch_size
        x, y = self.take(data, order[:full])
        for i in range(0, full, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]

    def train_runner(self, model: Model, optim: Optim, data: Data, order: np.ndarray, variant: str,
                     batch_size: int) -> Callable[[int], Any]:
        """run(k): k training steps through `order` in full batches (cycling), as the train stage takes them; the
        last step's output, unsynchronised. The epoch's batches are gathered and sliced on the device first, so no
        timed step holds a host-to-device copy, a gather or a slice: only the step itself."""
        step = self.make_step(model, optim, variant)
        it = itertools.cycle(list(self.batches(data, order, batch_size)))

        def run(k: int) -> Any:
            out = None
            for _ in range(k):
                out = step(*next(it))
            return out
        return run

    def train_timings(self, model: Model, optim: Optim, data: Data, order: np.ndarray, variant: str,
                      batch_size: int, warmup: int, steps: int, repeats: int, min_s: float = 0.0,
                      clock: Clock = time.perf_counter) -> tuple[float, list[float]]:
        """(seconds of the first step, incl. compilation; seconds per step of each timed repeat, warmup
        excluded), as train_runner steps."""
        run = self.train_runner(model, optim, data, order, variant, batch_size)
        t0 = clock()
        self.sync(run(1))  # the first step: tracing, compilation, allocator growth
        first = clock() - t0
        return first, repeat(run, warmup - 1, steps, repeats, self.sync, min_s, clock)
