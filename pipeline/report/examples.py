"""Example reports: `make examples` makes each again from its recorded params, and stamps it.

reports/examples.yaml records each example's params (as `dvc exp run -S` would set them). Making one: a fresh
clone of HEAD (the stamp names a commit, so only committed code runs), those params, `dvc repro`, the calibration
GEMM read before and after, and the report's files copied into reports/example-<name>/ with a README whose first
line is the stamp: commit, a digest of pipeline/'s code, data, machine, GEMM rate, wall time. When the code has
changed since, the first line must say so: `--mark` rewrites the stamp of every such example ("Older than the
code"), and tests/test_examples.py fails while one is unmarked.

    python -m pipeline.report.examples [NAME ...]   # make them again (all by default)
    python -m pipeline.report.examples --mark       # say which are older than the code
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import files, params
from pipeline.backends import cpu_threads
from pipeline.errors import DataError
from pipeline.probe import speedo
from pipeline.report.exps import git

log = logging.getLogger("examples")
ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "reports/examples.yaml"
COPIED = ("summary.md", "index.html", "headline.json", "results.csv", "figures")
STAMP = re.compile(r"made by `make examples` at commit (?P<commit>[0-9a-f]{7,40}), code (?P<code>[0-9a-f]{12})")
OLDER = "**Older than the code**: "


def code_digest(root: Path = ROOT) -> str:
    """A digest of pipeline/'s source files (names and bytes): what an example describes."""
    h = hashlib.sha256()
    for p in sorted((root / "pipeline").rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def recorded(path: Path = RECORD) -> dict[str, dict]:
    try:
        got = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read the recorded examples ({e})") from None
    bad = [n for n, ex in (got or {}).items() if not isinstance(ex, dict) or set(ex) != {"about", "set"}]
    if not got or bad:
        raise DataError(f"{path}: each example needs exactly `about` and `set` (bad: {', '.join(map(str, bad))})")
    return got


def make(name: str, ex: dict, repo: Path = ROOT) -> Path:
    """Run example `name` in a fresh clone of HEAD and copy its report into reports/example-<name>/."""
    commit = git(repo, "rev-parse", "HEAD").strip()
    if git(repo, "status", "--porcelain", "--", "pipeline", "dvc.yaml", "params.yaml").strip():
        log.warning("uncommitted changes in pipeline/, dvc.yaml or params.yaml: the example runs HEAD (%s) without "
                    "them", commit[:7])
    with tempfile.TemporaryDirectory(prefix=f"example-{name}-") as tmp:
        clone = Path(tmp) / "clone"
        git(repo, "clone", "-q", str(repo), str(clone))
        raw = params.override(yaml.safe_load((clone / "params.yaml").read_text()), **ex["set"])
        p = params.parse(raw)  # a bad override stops here, before anything runs
        (clone / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        threads = cpu_threads(p.threads)
        before, t0 = speedo.gemm_gflops(threads, seconds=3.0), time.perf_counter()
        log.info("example %s: dvc repro in %s (GEMM %.0f GFLOP/s)", name, clone, before)
        if subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=clone).returncode:
            raise DataError(f"example {name}: `dvc repro` failed (its lines above say why); nothing written")
        wall, after = time.perf_counter() - t0, speedo.gemm_gflops(threads, seconds=3.0)
        machine = json.loads((clone / "reports/env.json").read_text()).get("machine_name", "unknown")
        code = code_digest(clone)  # the code that ran: HEAD's, whatever the working tree holds
        out = repo / "reports" / f"example-{name}"
        part = out.with_name(out.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        for f in COPIED:
            src = clone / "reports" / f
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, part / f)
    sets = " ".join(f"-S '{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, list) else v}'"
                    for k, v in ex["set"].items())
    files.write_text(part / "README.md", (
        f"Example `{name}`, made by `make examples` at commit {commit[:7]}, code {code}: data "
        f"`{p.data.name}`, machine `{machine}`, GEMM {before:.0f} GFLOP/s before the run and {after:.0f} after; "
        f"`dvc repro` took {wall:.0f} s.\n\n# Example report: {ex['about']}\n\n"
        f"Made from reports/examples.yaml, as `dvc exp run {sets}` would run it, every other parameter at its default "
        "(the report ends with the whole params file). The figures are this run's, on this machine: read them "
        "beside the GEMM rate above, and compare only within the report.\n\n"
        "- [summary.md](summary.md): the report; [index.html](index.html) the same page with its figures inlined\n"
        "- [results.csv](results.csv): every figure as a tidy row; [headline.json](headline.json): DVC's metrics\n"))
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)
    log.info("wrote %s (%.0f s)", out, wall)
    return out


def mark(root: Path = ROOT) -> list[Path]:
    """Prefix the stamp of every example made from other code than today's with "Older than the code"."""
    code, marked = code_digest(root), []
    for readme in sorted((root / "reports").glob("example-*/README.md")):
        first, _, rest = readme.read_text().partition("\n")
        m = STAMP.search(first)
        if m and m["code"] != code and not first.startswith(OLDER):
            files.write_text(readme, f"{OLDER}pipeline/ has changed since this example was made (`make examples` "
                                     f"makes it again). {first}\n{rest}")
            marked.append(readme)
    return marked


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="examples to make (default: every one in reports/examples.yaml)")
    ap.add_argument("--mark", action="store_true", help="only mark the examples older than the code")
    a = ap.parse_args(argv)
    if a.mark:
        log.info("marked %d example(s) older than the code", len(mark()))
        return
    every = recorded()
    unknown = [n for n in a.names if n not in every]
    if unknown:
        raise DataError(f"{RECORD}: no example named {unknown[0]!r} (recorded: {', '.join(every)})")
    for name in a.names or every:
        make(name, every[name])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
