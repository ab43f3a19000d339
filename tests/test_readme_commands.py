"""Every command README.md and docs/*.md show works as written: its Make target exists, its `python -m` module is
there, its DVC subcommand takes the options shown, and every `-S key=value` is a params override the schema
accepts."""
from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
import yaml

from pipeline import params
from tests.conftest import ROOT, raw_params

PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|\bEXP\b|NNN|/path/to/|key=value")


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path) -> list[str]:
    """Commands in ```sh blocks and in inline code spans that start with make, dvc, python -m or -S."""
    text = path.read_text()
    found = [line.split("#")[0].strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)
             for line in block.replace("\\\n", " ").splitlines()]  # a continued line is one command
    found += [" ".join(c.split()) for c in re.findall(r"`((?:make|dvc|python -m|-S) [^`]+)`", text)]
    return [c for c in dict.fromkeys(found) if c]


def shown_in() -> list[tuple[str, str]]:
    """(where, command) for every command of README.md and docs/*.md: where is the file and the line it starts on."""
    return [(f"{path.relative_to(ROOT)}:{line_of(path.read_text(), cmd)}", cmd) for path in DOCS
            for cmd in commands(path)]


def line_of(text: str, cmd: str) -> int:
    """The first line holding the longest run of `cmd`'s leading words (a wrapped command starts on that line)."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    words = cmd.split()
    for k in range(len(words), 0, -1):
        head = " ".join(words[:k])
        for n, line in enumerate(lines, 1):
            if head in line:
                return n
    return 0


def overrides(cmd: str) -> list[str]:
    words = shlex.split(cmd.replace("\\\n", " "))
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-S"]


def check_overrides(specs: list[str]) -> None:
    """A command's `-S key=value`s, together, as DVC reads them (each value YAML; `a,b,c` on a scalar key is a
    queue grid, each of its values checked)."""
    grid = [[(k, yaml.safe_load(x)) for x in ([v] if v.startswith(("[", "{")) else v.split(","))]
            for k, v in (spec.split("=", 1) for spec in specs)]
    for combo in itertools.product(*grid):
        params.parse(raw_params(**dict(combo)))


@cache
def dvc_help(sub: tuple[str, ...]) -> str:
    out = subprocess.run([sys.executable, "-m", "dvc", *sub, "--help"], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else ""


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


SHOWN = shown_in()
CMDS = [cmd for _, cmd in SHOWN]


def test_the_readme_shows_commands():
    readme = commands(ROOT / "README.md")
    assert len(readme) > 20 and any(c.startswith("dvc exp run -S") for c in readme), readme
    assert len(DOCS) > 1 and len(CMDS) > len(readme), "docs/*.md: no page found, or none shows a command"


@pytest.mark.parametrize("where, cmd", SHOWN, ids=[f"{w} {c}" for w, c in SHOWN])
def test_each_readme_command_works_as_written(where, cmd):
    check_overrides([s for s in overrides(cmd) if not PLACEHOLDER.search(s)])  # a bad key: the one-line error
    words = shlex.split(cmd)
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value before the command: its environment
        words = words[1:]
    if words[0] == "torchrun":  # PyTorch's launcher: the module it starts must be there
        words = ["python", *words[words.index("-m"):]]
    if words[0] == "make":
        assert words[1] in make_targets(), f"{where}: `{cmd}`: no Make target {words[1]!r}"
    elif words[:2] == ["python", "-m"] and not PLACEHOLDER.search(words[2]):
        assert importlib.util.find_spec(words[2]), f"{where}: `{cmd}`: no module {words[2]}"
    elif words[0] == "dvc":
        sub = tuple(w for w in words[1:3] if re.fullmatch(r"[a-z]+", w))
        while sub and not dvc_help(sub):  # `dvc exp push origin name`: the subcommand is the leading words
            sub = sub[:-1]
        assert sub, f"{where}: `{cmd}`: not a DVC command"
        for opt in (w.split("=")[0] for w in words if w.startswith("-") and w != "-"):
            assert re.search(rf"(^|[\s,\[]){re.escape(opt)}\b", dvc_help(sub)), \
                f"{where}: `{cmd}`: dvc {' '.join(sub)} has no option {opt}"
