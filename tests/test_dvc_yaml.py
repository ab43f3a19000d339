"""dvc.yaml tells the truth: every pipeline module a stage imports is among its deps, and nothing else is."""
from __future__ import annotations

import ast
import re

import pytest
import yaml

from pipeline import params
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
P = params.load(ROOT / "params.yaml")


def imports(path: str) -> set[str]:
    """pipeline/*.py files that the module at `path` imports (statically), and so on, transitively."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pipeline")]
            for n in names:
                cand = n.replace(".", "/") + ".py"
                if (ROOT / cand).is_file():
                    todo.append(cand)
        if f == "pipeline/backends.py":  # backends.load imports pipeline/<framework>_backend.py by name
            todo += [f"pipeline/{fw}_backend.py" for fw in (CURRENT_FRAMEWORK or params.FRAMEWORKS)]
    return seen - {"pipeline/__init__.py", "pipeline/stages/__init__.py"}


CURRENT_FRAMEWORK: list[str] = []


def cells() -> list[tuple[str, dict, dict]]:
    """(name, stage definition, item) for every stage, matrix stages expanded over params.yaml's lists."""
    out = []
    for name, st in DVC["stages"].items():
        if "matrix" not in st:
            out.append((name, st, {}))
            continue
        axes = {k: (getattr(P, v[2:-1]) if isinstance(v, str) else v) for k, v in st["matrix"].items()}
        items = [{}]
        for k, values in axes.items():
            items = [i | {k: v} for i in items for v in values]
        out += [(f"{name}@{'-'.join(map(str, i.values()))}", st, i) for i in items]
    return out


def fill(text: str, item: dict) -> str:
    return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), text)


@pytest.mark.parametrize("name, stage, item", cells(), ids=[c[0] for c in cells()])
def test_stage_deps_are_exactly_the_modules_it_imports(name, stage, item):
    module = re.search(r"python -m (pipeline\.stages\.\w+)", stage["cmd"]).group(1)
    CURRENT_FRAMEWORK[:] = [item["framework"]] if "framework" in item else []
    needed = imports(module.replace(".", "/") + ".py")
    if "framework" not in item and "pipeline/backends.py" not in needed:  # no backend: none listed
        assert not any(n.endswith("_backend.py") for n in needed), name
    listed = {fill(d, item) for d in stage.get("deps", []) if str(d).startswith("pipeline/")}
    assert listed == needed, f"{name}: missing {sorted(needed - listed)}, extra {sorted(listed - needed)}"


def test_the_import_walk_finds_indirect_imports():
    CURRENT_FRAMEWORK[:] = ["torch"]
    found = imports("pipeline/stages/train.py")
    # train -> runs -> loop -> backends -> torch_backend -> timing: each only reachable through the one before
    assert {"pipeline/runs.py", "pipeline/loop.py", "pipeline/torch_backend.py", "pipeline/timing.py",
            "pipeline/errors.py"} <= found
    assert "pipeline/tensorflow_backend.py" not in found
