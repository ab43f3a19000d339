"""The code map (docs/code.md) is made from the tree, and the tree keeps the layout's promises: every module and
package says what it is for, and no module or function grows past what one reads in a sitting.

Print the map to paste into docs/code.md after moving or adding a module: `python -m tests.test_readme`.
"""
from __future__ import annotations

import ast
import re
import textwrap

from tests.conftest import ROOT

WIDTH = 118
NAME = 27                 # the column where a module's summary starts
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
BEGIN, END = "<!-- code map: made by `python -m tests.test_readme` -->", "<!-- end of code map -->"


def summary(path) -> str:
    """A module's first sentence (its docstring's first paragraph up to the first full stop)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<=[a-z0-9)`'])\. ", para + " ")[0].strip().rstrip(".")


def code_map() -> str:
    lines = []

    def entry(indent: int, name: str, text: str) -> None:
        head = " " * indent + name
        pad = max(NAME, len(head) + 2)
        wrapped = textwrap.wrap(text, WIDTH - pad) or [""]
        lines.append(head.ljust(pad) + wrapped[0])
        lines.extend(" " * pad + w for w in wrapped[1:])

    root = ROOT / "pipeline"
    lines.append("pipeline/")
    for path in sorted(root.glob("*.py")):
        if path.name != "__init__.py":
            entry(2, path.name, summary(path))
    for pkg in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        entry(2, pkg.name + "/", summary(pkg / "__init__.py"))
        for path in sorted(pkg.glob("*.py")):
            if path.name != "__init__.py":
                entry(4, path.name, summary(path))
    return "\n".join(lines)


CODE_MAP = ROOT / "docs" / "code.md"


def test_the_code_map_shows_the_tree_as_it_is():
    text = CODE_MAP.read_text()
    assert BEGIN in text and END in text, f"docs/code.md needs the code map between {BEGIN} and {END}"
    shown = text.split(BEGIN)[1].split(END)[0].strip().removeprefix("```").removesuffix("```").strip("\n")
    assert shown == code_map(), ("docs/code.md: the code map is stale; paste `python -m tests.test_readme`:\n"
                                 + code_map())


def test_every_module_and_package_says_what_it_is_for_in_one_line():
    bad = [f"{p.relative_to(ROOT)}: {summary(p)!r}" for p in (ROOT / "pipeline").rglob("*.py")
           if (p.parent != ROOT / "pipeline" or p.name != "__init__.py")
           and not 10 <= len(summary(p)) <= WIDTH - NAME]
    assert not bad, f"a module's first sentence is its line in the code map (10 to {WIDTH - NAME} characters): {bad}"


def test_modules_and_functions_stay_readable_in_a_sitting():
    long = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, long


if __name__ == "__main__":
    print(f"{BEGIN}\n```\n{code_map()}\n```\n{END}")
