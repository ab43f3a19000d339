"""The list of frameworks, and creating a backend by name (imports only that framework).

The contract every backend implements is in base.py; each framework's is `<framework>_backend.py`, imported only when
that framework is asked for: TensorFlow and PyTorch must not share a process (their thread pools would compete).

This file imports nothing else of the project, so params.py can name the frameworks without depending on them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.backends.base import Backend

FRAMEWORKS = ("torch", "tensorflow", "numpy")  # the one list; each is <name>_backend.py here
LABEL = {"torch": "PyTorch", "tensorflow": "TensorFlow", "numpy": "NumPy"}
SHORT = {"torch": "torch", "tensorflow": "tf", "numpy": "np"}  # for figure labels with little room


def create(framework: str, threads: int, device: str, seed: int, precision: str) -> Backend:
    """The backend of `framework`, set up for this process (threads, device, seed, precision); imports only that
    framework."""
    module = importlib.import_module(f"pipeline.backends.{framework}_backend")
    return module.BACKEND(threads, device, seed, precision)
