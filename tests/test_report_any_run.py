"""The report is written from whatever the stages left: any children flagged or gone, cells gone or diverged, opt-in
stages absent. Property-based: each example starts from the real records of a `digits` run (tests/fixtures/run,
made by tests/fixtures/make_run.py), breaks them as a run can be broken, and builds the report from them."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import params
from pipeline.measure import bench, rounds
from pipeline.probe import speedo
from pipeline.records import Measurement
from pipeline.scale import run
from pipeline.stages import report as stage
from tests.test_report import quick_figures  # noqa: F401  # blank figures, bound to each figure's signature

FIXTURE = Path(__file__).parent / "fixtures" / "run"
RECORDS = json.loads((FIXTURE / "reports/bench/records.json").read_text())
ROWS = [Measurement.from_flat(r) for r in RECORDS["records"]]
CHILDREN = sorted({(r.kind, r.round, r.arm) for r in ROWS}, key=str)
CELLS = sorted(p.name for p in (FIXTURE / "reports/runs").iterdir())
SCALE = json.loads((FIXTURE / "reports/scale/records.json").read_text())
LAUNCHES = sorted({(x["framework"], x["workers"], x["round"]) for x in SCALE["rows"]})
P = params.load(FIXTURE / "params.yaml")

# What a verdict line may say: a verdict with its evidence, or "no verdict: <reason>"
VERDICT = re.compile(r"^(no verdict: \S.*|no clear difference[ :(].*|\S.* is faster \(.*\)|\S.* reaches the target "
                     r"faster: .*|\S.* is more accurate \(.*\)|these two trained models differ on the test set, .*)$")
FATES = ("keep", "slow", "busy", "drop")


def broken_run(tmp: Path, fate: dict, cells: dict, loaders: dict, scale: str, bench_gone: bool,
               launches: dict | None = None) -> Path:
    """A copy of the fixture run with each child's `fate` applied (the machine in a slow spell throughout it, or busy
    for nearly all of it: flagged; or gone, as if it failed), each train
    cell kept, diverged or gone, each framework's loaders kept or gone, the scale stage's records real (each
    launch's `launches` fate applied alike), opt-out (measured: false) or gone; the bench's and the scale stage's
    records then summarised again by their own code."""
    root = tmp / "run"
    shutil.copytree(FIXTURE, root)
    rep = root / "reports"
    rows = []
    for r in ROWS:
        what = fate.get((r.kind, r.round, r.arm), "keep")
        if what == "drop":
            continue
        m = Measurement.from_flat(r.flat())
        usual = rounds.level(m)
        if what == "slow":  # the whole child ran in a spell at 55% of the calm speed (its partner may have too)
            m.calm_level_gflops, m.calib_after_gflops = 0.55 * usual, 0.55 * m.calib_after_gflops
        if what == "busy" and m.train:  # the machine busy for nearly all of it: too few calm repeats, no figures
            m.train = replace(m.train, samples_per_s=float("nan"), repeats=0)
            m.infer = {bs: replace(x, samples_per_s=float("nan"), repeats=0) for bs, x in m.infer.items()}
        if what in ("slow", "busy") and m.kind == "round":
            m.flag = rounds.judge([m], usual, P.bench.max_drift)  # the bench's own rule says why
        rows.append(m)
    if bench_gone or not rows:
        shutil.rmtree(rep / "bench")
    else:
        records, metrics = bench.summary(rows, P, RECORDS["threads"], RECORDS["flops_per_sample"], RECORDS["arms"],
                                         {RECORDS["vary"]: RECORDS["vary_own"]})
        (rep / "bench/records.json").write_text(json.dumps(_nulls(RECORDS | records)))
    for cell, what in cells.items():
        d = rep / "runs" / cell
        if what == "drop":
            shutil.rmtree(d)
        elif what == "diverge":  # the loss stopped being finite at the first evaluation
            m = json.loads((d / "metrics.json").read_text())
            m |= {"reached_seeds": 0, "time_to_target_s": None, "time_to_target_s_min": None,
                  "time_to_target_s_max": None, "epochs_to_target": None, "diverged_seeds": m["seeds"],
                  "best_val_acc": None}
            (d / "metrics.json").write_text(json.dumps(m))
            h = pd.read_csv(d / "history.tsv", sep="\t").iloc[:1].assign(val_acc=np.nan, val_loss=np.nan,
                                                                        train_loss=np.nan)
            h.to_csv(d / "history.tsv", sep="\t", index=False)
            s = pd.read_csv(d / "seeds.tsv", sep="\t").assign(reached=False, time_to_target_s=np.nan,
                                                             steps_to_target=np.nan, diverged=True)
            s.to_csv(d / "seeds.tsv", sep="\t", index=False)
    for fw, what in loaders.items():
        if what == "drop":
            shutil.rmtree(rep / "loaders" / fw)
    kept = [x | ({"flag": "machine speed changed -40% during the measurement"} if what == "flag" else {})
            for x in SCALE["rows"] if (what := (launches or {}).get((x["framework"], x["workers"], x["round"]),
                                                                   "keep")) != "drop"]
    if scale == "keep" and kept:
        table, verdicts = run.summary(kept, P.frameworks, P.models, P.scale.workers, P.bench.min_effect,
                                      P.bench.max_drift)
        (rep / "scale/records.json").write_text(json.dumps(_nulls(SCALE | {
            "rows": kept, "table": table, "verdicts": verdicts, "flagged": sum(bool(x["flag"]) for x in kept)})))
    if scale == "drop":
        shutil.rmtree(rep / "scale")
    elif scale == "opt-out":
        (rep / "scale/records.json").write_text(json.dumps({"measured": False, "rows": [], "table": [],
                                                            "verdicts": []}))
    return root


def _nulls(obj):
    """NaN as JSON null, as files.write_json writes it."""
    from pipeline.files import _clean
    return _clean(obj)


def build(root: Path) -> str:
    stage.main(["--results", str(root / "reports"), "--data", str(root / "data/prepared.npz"), "--params",
                str(root / "params.yaml")])
    return (root / "reports/summary.md").read_text()


def check(root: Path, md: str) -> None:
    """The report was written whole, every verdict line is a verdict or says why there is none, and every figure it
    names exists."""
    rep = root / "reports"
    for name in ("summary.md", "index.html", "results.csv", "headline.json", "plots/val_acc.tsv"):
        assert (rep / name).is_file(), name
    # a verdict line opens with its model: "**mlp train**, PyTorch vs TensorFlow: ...", "**cnn** (times): ...",
    # "**mlp**, PyTorch vs TensorFlow, time to target: ...", "**mlp, 2 workers**: ..."
    lines = [line for line in md.splitlines() if re.match(rf"^\*\*({'|'.join(P.models)})\b", line)]
    assert lines
    for line in lines:
        said = re.sub(r"^\*\*[^*]+\*\*(, [^:]+| \([^)]*(\([^)]*\)[^)]*)*\))?: ", "", line)
        assert VERDICT.match(said), line
    assert "no verdict (" not in md  # every withheld verdict is "no verdict: <reason>"
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (rep / target).is_file(), target
    html = (rep / "index.html").read_text()
    assert html.count("<img ") == md.count("![")


fates = st.fixed_dictionaries({c: st.sampled_from(FATES) for c in CHILDREN})
cells = st.fixed_dictionaries({c: st.sampled_from(("keep", "keep", "diverge", "drop")) for c in CELLS})
loaders = st.fixed_dictionaries({fw: st.sampled_from(("keep", "drop")) for fw in P.frameworks})
launches = st.fixed_dictionaries({k: st.sampled_from(FATES) for k in LAUNCHES})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fate=fates, cells=cells, loaders=loaders, scale=st.sampled_from(("keep", "opt-out", "drop")),
       bench_gone=st.booleans(), launches=launches)
def test_any_broken_run_still_gives_a_whole_report(tmp_path_factory, fate, cells, loaders, scale, bench_gone,
                                                   launches):
    root = broken_run(tmp_path_factory.mktemp("any"), fate, cells, loaders, scale, bench_gone, launches)
    check(root, build(root))


@pytest.mark.parametrize("kinds", [("round",), ("round", "variants", "threads")], ids=["rounds", "every-child"])
def test_a_run_whose_children_were_all_flagged_says_no_verdict_with_its_reason(tmp_path, kinds):
    root = broken_run(tmp_path, {c: "busy" for c in CHILDREN if c[0] in kinds}, {}, {}, "keep", False)
    md = build(root)
    check(root, md)
    speed = [line for line in md.splitlines() if re.match(r"^\*\*(mlp|cnn) (train|infer)\*\*", line)]
    assert speed and all(": no verdict: " in line for line in speed), speed
    assert "rounds" in speed[0] and "dvc repro -f -s bench" in md  # how many usable rounds, and what to do
    # every child slow alike instead: a slow spell that held both children of a round still gives its ratio
    alike = broken_run(tmp_path / "slow", {c: "slow" for c in CHILDREN if c[0] in kinds}, {}, {}, "keep", False)
    md = build(alike)
    check(alike, md)
    assert any(": no verdict: " not in line for line in md.splitlines() if re.match(r"^\*\*(mlp|cnn) train\*\*", line))
    head = json.loads((root / "reports/headline.json").read_text())["headline"]
    assert head["speed_verdicts_withheld"] == len(RECORDS["verdicts"])


def test_a_framework_with_no_usable_round_is_named_and_the_others_still_shown(tmp_path):
    root = broken_run(tmp_path, {c: "busy" for c in CHILDREN if c[0] == "round" and c[2].startswith("tensorflow")},
                      {}, {}, "keep", False)
    md = build(root)
    check(root, md)
    speed = md[md.index("## Speed"):md.index("## Variants")]
    assert "| PyTorch " in speed and "| TensorFlow " not in speed.split("**Machine stability**")[1].split("**mlp")[0]
    assert "no usable round: every round child of TensorFlow was flagged by the drift monitor" in speed
    tf = [line for line in speed.splitlines() if line.startswith("**") and "vs TensorFlow" in line]
    assert tf and all(": no verdict: 0 usable rounds" in line for line in tf)
    control = [line for line in speed.splitlines() if "(A/A control)" in line]
    assert control and all(", 6 rounds)" in line for line in control)  # PyTorch's own rounds still paired


@pytest.mark.figures
def test_the_real_figures_are_drawn_or_said_missing_when_everything_was_flagged_or_lost(tmp_path):
    """The figures themselves, drawn for real, from a run that lost a framework's cells, the loaders and the bench's
    usable rounds: each is drawn from what is left or replaced by a line saying why."""
    fate = {c: "busy" for c in CHILDREN}
    root = broken_run(tmp_path, fate, {"tensorflow-cnn": "drop", "torch-mlp": "diverge"},
                      {fw: "drop" for fw in P.frameworks}, "keep", False, {k: "flag" for k in LAUNCHES})
    md = build(root)
    check(root, md)
    from PIL import Image
    named = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/rounds.png" in named and "figures/loaders.png" not in named  # flagged: drawn; lost: said
    assert "No learning curves" not in md and "Data loading" in md and "Not measured: `loaders@torch`" in md
    for target in named:  # drawn for real, not the blank stand-ins
        with Image.open(root / "reports" / target) as im:
            assert im.size[0] > 100 and im.size[1] > 100, target
