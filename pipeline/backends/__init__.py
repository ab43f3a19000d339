"""The framework registry: a folder per framework, found by looking; a backend made by name.

Each `pipeline/backends/<name>/` is a framework: its `__init__.py` holds a `FRAMEWORK` record (label, quirks; it
imports nothing of the framework itself), `backend.py` its `Backend` (base.py's contract), `layers.py` the canonical
layers in its terms and, if it has one, `scale.py` its data-parallel engine (engine.py's contract). Params,
measurement, scaling and the report take every framework list and label from here, so adding a framework is
adding its folder (and its requirements). The list is the folders' names; a framework's record is read only when
it is used, and its backend only when asked for: two frameworks must not share a process (their thread pools would
compete), and a stage depends on the folders of the frameworks it runs, not on every one.
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.backends.base import Backend


@dataclass(frozen=True)
class Framework:
    """What the pipeline knows of a framework without importing it."""
    name: str                    # its params.yaml name, its folder's and its cells' (torch-mlp)
    label: str                   # how readers know it: PyTorch
    short: str                   # for figure labels with little room
    module: str                  # the package it imports (gpu-check skips a framework not installed)
    packages: tuple[str, ...]    # distributions whose versions the env stage fingerprints
    loader: str                  # its data loader's parallelism knob, in words, for the report
    forks_on_gpu: bool = True    # whether bench children may be forked from an imported zygote where a GPU is seen
    engine: str = ""             # its data-parallel engine in words ("" = none: scale skips it)


FRAMEWORKS = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))  # the one list: its folders


@functools.cache
def about(framework: str) -> Framework:
    """`framework`'s record (its folder's __init__.py; nothing of the framework is imported)."""
    return importlib.import_module(f"{__name__}.{framework}").FRAMEWORK


def shown(framework: str | None) -> str | None:
    """The name a reader sees: PyTorch for torch; a name that is no framework's (or None), as it is."""
    return about(framework).label if framework in FRAMEWORKS else framework


def short(framework: str) -> str:
    return about(framework).short


def cpu_threads(threads: int) -> int:
    """params.yaml's `threads`, 0 (all cores) resolved to the cores this process may use: one explicit count for
    every framework. Left to each framework, 0 was its own default: under a one-core affinity mask (containers, batch
    schedulers) the train stage recorded 1 intra-op thread for PyTorch and 2 for TensorFlow."""
    return threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def backend_class(framework: str) -> type[Backend]:
    """The Backend subclass of `framework` (imports that framework)."""
    return importlib.import_module(f"{__name__}.{framework}.backend").BACKEND


def create(framework: str, threads: int, device: str, seed: int, precision: str) -> Backend:
    """The backend of `framework`, set up for this process (threads, 0 = cpu_threads' all cores; device, seed,
    precision); imports only that framework."""
    return backend_class(framework)(cpu_threads(threads), device, seed, precision)


def engine_class(framework: str) -> Any:
    """The data-parallel engine of `framework` (engine.py's contract; imports that framework's engine module)."""
    return importlib.import_module(f"{__name__}.{framework}.scale").ENGINE


def scalable(frameworks: list[str]) -> list[str]:
    """Those of `frameworks` with a data-parallel engine of their own."""
    return [f for f in frameworks if about(f).engine]
