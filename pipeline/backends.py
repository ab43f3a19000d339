"""The backend contract, and picking a backend by name.

A backend is a module (`pipeline/<name>_backend.py`) that provides exactly what `Backend` lists, with the same
parameter names; stages and the loop only ever call these, so they never branch on the framework. A new backend
implements this list; `tests/test_backends.py` checks every backend against it. Only the named framework is
imported: TensorFlow and PyTorch must not share a process (their thread pools would compete).

Arrays cross the contract as NumPy in canonical layouts (see spec.py); `Data` is whatever `put` returns (the
backend's device tensors) and is handed back to `take`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from pipeline.spec import ModelSpec, Optim

Data = Any   # (images, labels) on the backend's device, from put()
Model = Any  # the framework's model object, from build()


class Backend(Protocol):
    NAME: str                 # the framework name used in params.yaml and cell names
    MODEL_SUFFIX: str         # file suffix of a saved model
    DEFAULT: str              # the variant `train` uses: each framework's everyday path
    VARIANTS: dict[str, str]  # every variant's name -> one-line description for the report

    def setup(self, threads: int, device: str, seed: int) -> dict:
        """Threads (intra-op; inter-op 1), device and RNG, before anything runs. Returns what was set."""

    def reseed(self, seed: int) -> None:
        """Seed the framework's own RNG (dropout masks)."""

    def variants(self, compile: list[bool], keras_fit: bool) -> list[str]:
        """The variants to benchmark for these params; the first is DEFAULT."""

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Model:
        """The spec's network holding these canonical weights."""

    def get_weights(self, model: Model, spec: ModelSpec) -> list[np.ndarray]:
        """The model's weights in canonical layout."""

    def put(self, x: np.ndarray, y: np.ndarray) -> Data:
        """NHWC float32 images and int labels -> device tensors kept for the whole run."""

    def take(self, data: Data, idx: np.ndarray) -> Data:
        """The samples at `idx`, as device tensors."""

    def make_step(self, model: Model, optim: Optim, variant: str) -> Callable[[Any, Any], tuple[Any, Any]]:
        """step(x, y) -> (loss summed over the batch, correct count): one optimizer update."""

    def set_lr(self, step: Callable, lr: float) -> None:
        """Set the learning rate that the optimizer of `step` (from make_step) uses from its next call on."""

    def make_predict(self, model: Model, variant: str) -> Callable[[Any], Any]:
        """predict(x) -> logits, inference mode."""

    def train_timings(self, model: Model, optim: Optim, data: Data, order: np.ndarray, variant: str,
                      batch_size: int, warmup: int, steps: int, repeats: int) -> tuple[float, list[float]]:
        """(seconds of the first step, incl. compilation; seconds per step of each timed repeat, warmup
        excluded), stepping through `order` in full batches as the train stage does."""

    def numpy(self, t: Any) -> np.ndarray:
        """A framework tensor as a NumPy array."""

    def sync(self, out: Any = None) -> None:
        """Wait until queued device work (that produced `out`) has finished, so a timer measures it."""

    def save(self, model: Model, path: Path) -> None:
        """Write the trained model to `path` (raises OSError when the write fails)."""

    def load(self, spec: ModelSpec, path: Path) -> Model:
        """Read a model written by save()."""

    def loader_settings(self, workers: list[int]) -> list[int | str]:
        """The loader parallelism settings to sweep for these worker counts."""

    def make_loader(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float, batch_size: int,
                    workers: int | str, shift: int, seed: int, pin_memory: bool, persistent_workers: bool,
                    prefetch: int) -> Iterator[tuple[Any, Any]]:
        """An endless iterator of shuffled, normalised, augmented (x, y) device batches."""


def load(framework: str) -> Backend:
    """The backend module of `framework`, importing only that framework."""
    module: ModuleType = importlib.import_module(f"pipeline.{framework}_backend")
    return module  # type: ignore[return-value]  # a module satisfies the Protocol structurally
