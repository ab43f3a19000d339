"""The data-parallel engine contract: each framework's own engine, launched its own way.

One engine is made once per worker process (pipeline.scale.worker). It holds the framework backend (threads, device,
seed), the process group or strategy, and the rank; nothing lives in module globals. Every engine does the same
maths: every worker holds the same initial weights, computes the loss of its shard of the global batch summed and
divided by the *global* batch size, and the gradients are summed across workers, so N workers take the step one
worker takes on the whole batch (tests/test_scale.py checks it). The communication is the framework's own.
"""
from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from pipeline.spec import ModelSpec, Optim

StepFn = Callable[[Any, Any], Any]  # step(x_shard, y_shard) -> this worker's loss share (unsynchronised)
Launch = list[tuple[list[str], dict]]  # (command, extra environment) per process of one launch


class Engine(ABC):
    comm: str   # how it communicates, for the report ("gloo", "collective ring")
    rank: int
    world: int

    @abstractmethod
    def __init__(self, threads: int, device: str, seed: int, precision: str):
        """The backend (made first: threads are process-wide), then the process group from the launcher's env."""

    @staticmethod
    @abstractmethod
    def commands(workers: int, host: str, port: int, worker_args: list[str]) -> Launch:
        """The processes of one launch of `workers` workers meeting at host:port; `worker_args` follow
        `python -m pipeline.scale.worker`."""

    @staticmethod
    def failed(log: str) -> tuple[str, int] | None:
        """(rank, exit code) of the first failure its launcher reports in the workers' log, if it reports one."""
        return None

    @abstractmethod
    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Any:
        """The network holding these canonical weights, replicated the engine's way."""

    @abstractmethod
    def weights(self, model: Any, spec: ModelSpec) -> list[np.ndarray]:
        """This worker's weights in canonical layout."""

    @abstractmethod
    def make_step(self, model: Any, optim: Optim, global_batch: int) -> StepFn:
        """One data-parallel update per call on this worker's shard."""

    @abstractmethod
    def allreduce_s(self, model: Any, calls: int) -> float:
        """Seconds per all-reduce of one step's gradients (one flat buffer of every parameter), timed alone."""

    @abstractmethod
    def loss_sum(self, value: Any) -> float:
        """The global batch's mean loss from every worker's share."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every worker gets here."""

    def close(self) -> None:
        """End the process group (what the engine started)."""


def worker_command(worker_args: list[str]) -> list[str]:
    """`python -m pipeline.scale.worker ...`, with this interpreter."""
    return [sys.executable, "-m", "pipeline.scale.worker", *worker_args]
