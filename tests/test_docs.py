"""README.md and docs/*.md say only what the repository holds: every relative link (and its #anchor) resolves, every
`make <target>` is a Make target, every params key in backticks is in params.yaml, every repository path in
backticks exists (or is a pipeline output dvc.yaml declares), and the README stays a short front page with no
dates in it. Links and code spans are read with markdown-it-py, as a Markdown renderer reads them."""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from markdown_it import MarkdownIt

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
SCHEMES = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto: ...: not a file of this repository
PLACEHOLDER = re.compile(r"<[^>]*>|\*")              # target.<dataset>.<model>, reports/runs/<fw>-<model>/, train.*
PATH_PREFIXES = ("pipeline/", "tests/", "reports/", "docs/", ".dvc/", ".ci/")
PATH_SUFFIXES = (".py", ".yaml", ".md")
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".json", ".tsv", ".csv", ".png", ".npz", ".html", ".txt", ".gz",
                 ".log", ".pt", ".keras", ".msgpack")
YEAR = re.compile(r"(?<![\d.,])(?:19[89]\d|20[0-3]\d)(?![\d.,]\d)")  # 1980-2039: not a batch of 2048
MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?"
         r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
MONTH_DATE = re.compile(rf"\b{MONTH}\.? \d{{1,2}}\b|\b\d{{1,2}}(?:st|nd|rd|th)? {MONTH}\b")


@dataclass(frozen=True)
class Item:
    """Something a page names: a link target, a code span or a fence's text, with the line it is on."""
    path: Path
    line: int
    kind: str   # "link" | "code" | "fence"
    text: str
    info: str = ""  # a fence's language

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


MD = MarkdownIt("commonmark").enable("table")


@functools.cache
def items(path: Path) -> tuple[Item, ...]:
    """Every link target, image source, inline code span and fence of `path`, each with its line."""
    lines = path.read_text().splitlines()
    out = []
    for tok in MD.parse(path.read_text()):
        if tok.type == "fence":
            out.append(Item(path, tok.map[0] + 1, "fence", tok.content, tok.info.strip()))
        if tok.type != "inline":
            continue
        for child in tok.children or []:
            if child.type in ("link_open", "image"):
                target = str(child.attrs.get("href" if child.type == "link_open" else "src", ""))
                out.append(Item(path, _line(lines, tok.map, f"]({target}"), "link", target))
            elif child.type == "code_inline":
                out.append(Item(path, _line(lines, tok.map, child.content.split()[0] if child.content.split()
                                            else child.content), "code", child.content))
    return tuple(out)


def _line(lines: list[str], block: list[int] | None, needle: str) -> int:
    """The line (1-based) of the block `block` ([start, end) of the source lines) on which `needle` appears."""
    start, end = block or (0, len(lines))
    return next((n + 1 for n in range(start, end) if needle in lines[n]), start + 1)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase; punctuation dropped, except hyphens and spaces; spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of every heading of a Markdown file, a repeated one suffixed -1, -2, ... as GitHub does."""
    tokens, seen, out = MD.parse(path.read_text()), {}, set()
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            text = "".join(c.content for c in tokens[i + 1].children or [] if c.type in ("text", "code_inline"))
            base = slug(text)
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def check_link(item: Item) -> str:
    """Why a relative link of a page does not resolve ("" when it does)."""
    target = item.text
    if not target or SCHEMES.match(target):
        return ""
    file, _, anchor = target.partition("#")
    dest = (item.path.parent / file).resolve() if file else item.path
    if not dest.exists():
        return f"{target}: no such file ({dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
    if not dest.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: {dest.relative_to(ROOT)} has no heading with the anchor #{anchor}"
    return ""


def test_every_relative_link_and_its_anchor_resolves():
    bad = [f"{i.where}: {why}" for p in DOCS for i in items(p) if i.kind == "link" and (why := check_link(i))]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / i.text.partition("#")[0]).resolve() for i in items(ROOT / "README.md") if i.kind == "link"}
    missing = [str(p.relative_to(ROOT)) for p in DOCS[1:] if p.resolve() not in linked]
    assert not missing, f"README.md: no link to {missing}"


def code_text(path: Path) -> list[Item]:
    """The code a page shows: inline code spans and fenced blocks."""
    return [i for i in items(path) if i.kind in ("code", "fence")]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_every_make_target_named_exists():
    targets = make_targets()
    bad = []
    for p in DOCS:
        for i in code_text(p):
            for n, line in enumerate(i.text.splitlines()):
                for target in re.findall(r"(?:^|[\s;&|(`])make ([a-z][\w-]*)", line):
                    if target not in targets:
                        bad.append(f"{p.relative_to(ROOT)}:{i.line + n + (i.kind == 'fence')}: make {target}")
    assert not bad, f"no such Make target (Makefile has {sorted(targets)}):\n" + "\n".join(bad)


@functools.cache
def params_tree() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def sections() -> set[str]:
    """params.yaml's top-level keys that hold a section (a mapping): the first word of a dotted key."""
    return {k for k, v in params_tree().items() if isinstance(v, dict)}


def resolves(node: object, parts: list[str]) -> bool:
    """Whether the dotted key `parts` names a key under `node`; a placeholder part (<model>, *) is any child."""
    if not parts:
        return True
    if not isinstance(node, dict):
        return False
    head, rest = parts[0], parts[1:]
    if PLACEHOLDER.fullmatch(head):
        return any(resolves(child, rest) for child in node.values())
    return head in node and resolves(node[head], rest)


def params_keys(text: str) -> list[str]:
    """The dotted keys of params.yaml's sections that `text` names (a file name such as `bench.py` is not one)."""
    keys = re.findall(r"(?<![\w./<-])((?:%s)(?:\.(?:<[^>\s]+>|\*|[\w-]+))+)" % "|".join(sorted(sections())), text)
    return [k for k in keys if not k.endswith(FILE_SUFFIXES)]


def test_every_params_key_named_exists_in_params_yaml():
    bad = [f"{i.where}: `{key}`" for p in DOCS for i in items(p) if i.kind == "code" or
           (i.kind == "fence" and i.info == "sh") for key in params_keys(i.text)
           if not resolves(params_tree(), key.split("."))]
    assert not bad, "no such key in params.yaml:\n" + "\n".join(bad)


@functools.cache
def outputs() -> tuple[tuple[str, ...], ...]:
    """Every path dvc.yaml declares as a stage's output, metric or plot, split into parts (${...}: any part)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = [next(iter(o)) if isinstance(o, dict) else o for s in stages.values()
             for key in ("outs", "metrics", "plots") for o in s.get(key, [])]
    return tuple(tuple(p.strip("/").split("/")) for p in found)


def part_matches(made: str, named: str) -> bool:
    """One path part of a declared output (with ${...}) against one a page names (placeholders made `x`)."""
    return bool(re.fullmatch(re.sub(r"\\\$\\\{[^}]*\\\}", "[^/]+", re.escape(made)), named))


def is_output(named: str) -> bool:
    """Whether `named` is a declared pipeline output, inside one (a directory), or a directory holding one."""
    parts = PLACEHOLDER.sub("x", named).strip("/").split("/")
    return any(all(part_matches(m, n) for m, n in zip(made, parts)) for made in outputs())


@functools.cache
def names_in_repo() -> frozenset[str]:
    """The file names of the repository's own files (for a bare `spec.py` or `summary.md`)."""
    skip = {".git", ".venv", "data", "models", "__pycache__", ".pytest_cache", ".hypothesis", "dvc_plots"}
    found = set()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and (d in (".dvc", ".ci") or not d.startswith("."))]
        found.update(files)
    return frozenset(found)


def made_by_commands() -> dict[str, str]:
    """Directories a documented command writes outside dvc.yaml, each checked against the code that writes it."""
    compare = (ROOT / "pipeline/report/compare.py").read_text()
    assert 'default=Path("reports/compare")' in compare, "pipeline/report/compare.py: --out no longer reports/compare"
    return {"reports/compare": "make compare"}


def looks_like_path(text: str) -> bool:
    return (bool(re.fullmatch(r"[\w./<>*${}@-]+", text)) and not SCHEMES.match(text)
            and (text.startswith(PATH_PREFIXES) or text.startswith("../") or text.endswith(PATH_SUFFIXES)))


def check_path(text: str) -> str:
    """Why a path a page names in backticks is not the repository's ("" when it is)."""
    if text.startswith(("../", "/")):
        return "outside the repository"
    if "/" not in text:  # a bare file name: some file of the repository has it
        return "" if text in names_in_repo() else "no file of that name in the repository"
    pattern = PLACEHOLDER.sub("*", text).rstrip("/")
    for base in (ROOT, ROOT / "pipeline"):  # `measure/bench.py` is pipeline/measure/bench.py
        if any(base.glob(pattern)) or (base / pattern).exists():
            return ""
    if any(text.rstrip("/") == d or text.startswith(d + "/") for d in made_by_commands()):
        return ""
    return "" if is_output(text) else "no such file, and no output dvc.yaml declares"


def test_every_repository_path_named_exists():
    bad = [f"{i.where}: `{i.text}`: {why}" for p in DOCS for i in items(p)
           if i.kind == "code" and looks_like_path(i.text) and (why := check_path(i.text))]
    assert not bad, "paths that are not the repository's:\n" + "\n".join(bad)


def test_the_readme_is_a_short_front_page():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md: {n} lines, at most {README_MAX_LINES}: move depth into docs/"


def test_the_readme_carries_no_dates():
    lines = (ROOT / "README.md").read_text().splitlines()
    bad = [f"README.md:{n}: {m.group(0)!r}" for n, line in enumerate(lines, 1)
           for m in (*YEAR.finditer(line), *MONTH_DATE.finditer(line))]
    assert not bad, "a date in the README (say what holds, not when; link to a report for figures):\n" + "\n".join(bad)


def test_the_checks_find_what_they_look_for():
    # the helpers on known answers, so a check that silently matches nothing cannot pass
    assert slug("What \"equivalent\" means, and how it is proven") == "what-equivalent-means-and-how-it-is-proven"
    assert slug("Opt-in: settings as interleaved arms") == "opt-in-settings-as-interleaved-arms"
    assert resolves(params_tree(), ["target", "<dataset>", "<model>"])
    assert resolves(params_tree(), ["bench", "rounds"]) and resolves(params_tree(), ["schedule", "*", "lr"])
    assert not resolves(params_tree(), ["bench", "round"]) and not resolves(params_tree(), ["train", "lr"])
    assert params_keys("dvc exp run -S train.batch_size=64 -S 'bench.vary=train.batch_size'") == \
        ["train.batch_size", "bench.vary", "train.batch_size"]
    assert params_keys("measure/bench.py bench.py params.yaml headline.json") == []
    assert is_output("reports/runs/<fw>-<model>/history.tsv") and is_output("reports/summary.md")
    assert not is_output("reports/nothing.md") and check_path("pipeline/nothing.py")
    assert YEAR.search("on 2026-11-26") and not YEAR.search("torch==2.13.0, batch 2048, 12,800 samples")
    assert MONTH_DATE.search("on Nov 26") and MONTH_DATE.search("26 November")
    kinds = {i.kind for p in DOCS for i in items(p)}
    assert kinds == {"link", "code", "fence"}, kinds
