"""The list of frameworks, and creating a backend by name (imports only that framework).

The contract every backend implements is in base.py; each framework's is `<framework>_backend.py`, imported only when
that framework is asked for: TensorFlow and PyTorch must not share a process (their thread pools would compete).

This file imports nothing else of the project, so params.py can name the frameworks without depending on them.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.backends.base import Backend

FRAMEWORKS = ("torch", "tensorflow", "numpy")  # the one list; each is <name>_backend.py here
LABEL = {"torch": "PyTorch", "tensorflow": "TensorFlow", "numpy": "NumPy"}
SHORT = {"torch": "torch", "tensorflow": "tf", "numpy": "np"}  # for figure labels with little room


def shown(framework: str) -> str:
    """The name a reader sees: PyTorch for torch; a name that is no framework's, as it is."""
    return LABEL.get(framework, framework)


def cpu_threads(threads: int) -> int:
    """params.yaml's `threads`, 0 (all cores) resolved to the cores this process may use: one explicit count for
    every framework. Left to each framework, 0 was its own default: under a one-core affinity mask (containers, batch
    schedulers) the train stage recorded 1 intra-op thread for PyTorch and 2 for TensorFlow."""
    return threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def create(framework: str, threads: int, device: str, seed: int, precision: str) -> Backend:
    """The backend of `framework`, set up for this process (threads, 0 = cpu_threads' all cores; device, seed,
    precision); imports only that framework."""
    module = importlib.import_module(f"pipeline.backends.{framework}_backend")
    return module.BACKEND(cpu_threads(threads), device, seed, precision)
