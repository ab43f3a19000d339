"""dvc.yaml tells the truth: every pipeline module a stage imports is among its deps, and nothing else is.

A framework is a folder (pipeline/backends/<name>/), and a folder is the unit a stage depends on: a stage of one
framework (`train@torch-mlp`) lists that framework's folder; a stage that may run every framework lists
pipeline/backends, which holds them all."""
from __future__ import annotations

import ast
import re

import pytest
import yaml

from pipeline import backends, params
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
P = params.load(ROOT / "params.yaml")


def _code(path: str) -> bool:
    """Whether a module holds more than its docstring (a docstring-only package __init__ cannot change results)."""
    body = ast.parse((ROOT / path).read_text()).body
    return bool(body[1:] if body and isinstance(body[0], ast.Expr) else body)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports for type hints only; never run)."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
            "TYPE_CHECKING" for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if id(n) not in skip]


# The registry's functions that import a framework's folder by name (its record, backend or engine)
LOADS = {"about": "__init__.py", "shown": "__init__.py", "short": "__init__.py", "scalable": "__init__.py",
         "create": "backend.py", "backend_class": "backend.py", "engine_class": "scale.py"}


def _loads_frameworks(tree: ast.AST) -> set[str]:
    """The files of a framework's folder that a module loads through the registry (`backends.create(...)`,
    `from pipeline.backends import shown`), by file name."""
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") ==
            "backends"}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "pipeline.backends"
             for a in n.names}
    return {LOADS[u] for u in used if u in LOADS}


def _files(module: str) -> list[str]:
    """The files importing `module` runs: its own, and every package __init__ above it."""
    parts = module.split(".")
    out = [f"{'/'.join(parts[:k])}/__init__.py" for k in range(1, len(parts))]
    for cand in (module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"):
        if (ROOT / cand).is_file():
            out.append(cand)
    return [f for f in out if (ROOT / f).is_file()]


def imports(path: str) -> set[str]:
    """pipeline/ files that the module at `path` imports (statically), and so on, transitively; package
    __init__ files count when they hold code."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        tree = ast.parse((ROOT / f).read_text())
        for node in _runtime_nodes(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pipeline")]
            for n in names:
                todo += _files(n)
        for name in _loads_frameworks(tree):  # imported by name, for the frameworks the stage runs
            todo += [f for fw in (CURRENT_FRAMEWORK or backends.FRAMEWORKS)
                     for f in _files(f"pipeline.backends.{fw}.{name[:-3]}" if name != "__init__.py"
                                     else f"pipeline.backends.{fw}")]
    return {f for f in seen if not f.endswith("__init__.py") or _code(f)}


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


FOLDER = re.compile(r"^pipeline/backends/[^/]+/")  # a file inside a framework's folder


def expected(needed: set[str]) -> set[str]:
    """The deps that list `needed` (files), a framework's folder as one dep, every framework's as pipeline/backends."""
    folders = {FOLDER.match(f).group(0).rstrip("/") for f in needed if FOLDER.match(f)}
    out = {f for f in needed if not FOLDER.match(f)} | folders
    if folders == {f"pipeline/backends/{fw}" for fw in backends.FRAMEWORKS}:
        out = {f for f in out if not f.startswith("pipeline/backends/")} | {"pipeline/backends"}
    return out


@pytest.mark.parametrize("name, stage, item", cells(), ids=[c[0] for c in cells()])
def test_stage_deps_are_exactly_the_modules_it_imports(name, stage, item):
    module = re.search(r"python -m (pipeline\.stages\.\w+)", stage["cmd"]).group(1)
    CURRENT_FRAMEWORK[:] = [item["framework"]] if "framework" in item else []
    needed = expected(imports(module.replace(".", "/") + ".py"))
    listed = {fill(d, item) for d in stage.get("deps", []) if str(d).startswith("pipeline/")}
    assert listed == needed, f"{name}: missing {sorted(needed - listed)}, extra {sorted(listed - needed)}"


def test_the_import_walk_finds_indirect_imports():
    CURRENT_FRAMEWORK[:] = ["torch"]
    found = imports("pipeline/stages/train.py")
    # train -> backends.create -> torch/backend -> torch/layers, and -> base -> probe/timing -> stats: each only
    # reachable through the one before
    assert {"pipeline/train/cell.py", "pipeline/train/loop.py", "pipeline/backends/__init__.py",
            "pipeline/backends/torch/backend.py", "pipeline/backends/torch/layers.py", "pipeline/probe/timing.py",
            "pipeline/probe/stats.py", "pipeline/errors.py"} <= found
    assert not any(f.startswith("pipeline/backends/tensorflow") for f in found)
    assert "pipeline/backends/torch" in expected(found) and "pipeline/backends" not in expected(found)
    assert "pipeline/train/__init__.py" not in found  # a docstring only
