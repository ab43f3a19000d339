"""Read DVC experiments' params and committed results out of git.

Read DVC experiments' results out of git: which experiments exist, their params, and the result files their
pipeline committed (reports/results.csv, env.json, bench/records.json, each train cell's seeds.tsv).

Experiments are listed through DVC's own API (Repo.experiments.ls) and read through git (`git show REV:PATH`): every
file the comparison needs is a `cache: false` output, so it lives in the experiment's commit and needs no DVC
remote. An experiment whose files are missing, unreadable or in an older format comes back as `Skipped` with the
reason, never silently dropped.
"""
from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from pipeline.records import FORMAT, Cell
from pipeline.errors import DataError

RESULTS = "reports/results.csv"
ENV = "reports/env.json"
BENCH = "reports/bench/records.json"


@dataclass
class Exp:
    name: str                 # the DVC experiment name, or the git revision given
    rev: str                  # commit SHA holding its results
    params: dict              # params.yaml, flattened to dotted keys
    env: dict                 # reports/env.json: the machine fingerprint
    results: pd.DataFrame     # reports/results.csv
    bench: dict               # reports/bench/records.json
    seeds: dict[Cell, pd.DataFrame] = field(default_factory=dict)  # seeds.tsv

    @property
    def machine(self) -> str:
        """What tells machines apart in a comparison: the name set for it (else one made from its hardware), and its
        hardware."""
        e = self.env
        gpus = e.get("gpu_used") or ", ".join(e.get("gpus") or []) or "no GPU"  # the one used, where a run used one
        return f"{e.get('machine_name', '?')} ({e.get('cpu', '?')}, {e.get('cores_available', '?')} cores, {gpus})"


@dataclass
class Skipped:
    name: str
    reason: str


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode:
        raise DataError(f"git {' '.join(args)}: {(out.stderr.strip().splitlines() or ['failed'])[-1]}")
    return out.stdout


def listed(repo: Path, all_commits: bool) -> list[tuple[str, str]]:
    """(name, commit SHA) of every DVC experiment, oldest first: of the current commit, or of every commit."""
    from dvc.repo import Repo  # dvc is heavy to import; only this function needs it

    with Repo(str(repo)) as r:
        found = [(name, sha) for exps in r.experiments.ls(all_commits=all_commits).values() for name, sha in exps
                 if sha]  # no SHA: a remote-only listing, nothing to read here
    return sorted(found, key=lambda e: git(repo, "show", "-s", "--format=%cI", e[1]).strip())


def resolve(repo: Path, names: list[str], all_commits: bool) -> list[tuple[str, str]]:
    """(name, commit SHA) of each experiment asked for: DVC experiment names, or any git revision (a commit, a
    branch, HEAD); none asked for: every experiment of the current commit (all commits with `all_commits`)."""
    known = listed(repo, all_commits or bool(names))
    if not names:
        return known
    by_name = dict(known)
    out = []
    for n in names:
        if n in by_name:
            out.append((n, by_name[n]))
            continue
        try:
            out.append((n, git(repo, "rev-parse", "--verify", "--quiet", f"{n}^{{commit}}").strip()))
        except DataError:
            raise DataError(f"{n}: neither a DVC experiment here (`dvc exp list --all-commits`) nor a git "
                            "revision; pull other machines' experiments with `dvc exp pull origin`") from None
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"batch_size": 64}} -> {"train.batch_size": 64}; lists stay values."""
    out = {}
    for k, v in d.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _show(repo: Path, rev: str, path: str) -> str | None:
    try:
        return git(repo, "show", f"{rev}:{path}")
    except DataError:
        return None


def read(repo: Path, name: str, rev: str) -> Exp | Skipped:
    """One experiment's results, or why they cannot be compared."""
    texts = {p: _show(repo, rev, p) for p in ("params.yaml", RESULTS, ENV, BENCH)}
    missing = [p for p, t in texts.items() if t is None]
    if missing:
        return Skipped(name, f"{', '.join(missing)} not in commit {rev[:7]} (did the experiment finish?)")
    try:
        params = flatten(yaml.safe_load(texts["params.yaml"]) or {})
        env, bench = json.loads(texts[ENV]), json.loads(texts[BENCH])
        results = pd.read_csv(io.StringIO(texts[RESULTS]))
    except (yaml.YAMLError, json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        return Skipped(name, f"unreadable results in commit {rev[:7]}: {str(e).splitlines()[0]}")
    if bench.get("format", 1) < FORMAT:
        return Skipped(name, f"older results format ({BENCH} format {bench.get('format', 1)} < {FORMAT}: no "
                             "measurement times); run it again to compare it")
    seeds = {}
    for cell in (Cell(fw, model) for fw in bench["frameworks"] for model in bench["models"]):
        text = _show(repo, rev, f"reports/runs/{cell}/seeds.tsv")
        if text is None:
            return Skipped(name, f"reports/runs/{cell}/seeds.tsv not in commit {rev[:7]}")
        seeds[cell] = pd.read_csv(io.StringIO(text), sep="\t")
    return Exp(name, rev, params, env, results, bench, seeds)


def gather(repo: Path, names: list[str], all_commits: bool) -> tuple[list[Exp], list[Skipped]]:
    exps: list[Exp] = []
    skipped: list[Skipped] = []
    for name, rev in resolve(repo, names, all_commits):
        got = read(repo, name, rev)
        (exps if isinstance(got, Exp) else skipped).append(got)  # type: ignore[arg-type]
    return exps, skipped
