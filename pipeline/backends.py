"""Pick a backend by framework name, importing only that framework (TF and torch must not share a process)."""
from __future__ import annotations

import importlib
from types import ModuleType


def load(framework: str) -> ModuleType:
    return importlib.import_module(f"pipeline.{framework}_backend")
