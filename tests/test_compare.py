"""Comparing experiments: the unpaired verdict, the changed params, overlaps, skipped experiments, and end to end
with real git and DVC (a bare git remote, a local DVC remote, two clones as two machines, a third that compares)."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.measure import verdict
from pipeline.report import compare, exps
from tests.conftest import ROOT, write_params
from tests.test_pipeline import ENV, TINY, dvc, sh


def test_shift_interval_matches_a_brute_force_coverage():
    """The interval's coverage is the Mann-Whitney law's: check it by enumerating every ordering of 4 + 5 values."""
    from itertools import combinations
    n, m = 4, 5
    counts = np.zeros(n * m + 1)
    for pos in combinations(range(n + m), n):  # positions of the first sample among the sorted n + m values
        counts[sum(p - i for i, p in enumerate(pos))] += 1  # U = pairs (a, b) with b below a
    np.testing.assert_array_equal(verdict._rank_sum_counts(n, m), counts)
    a, b = [1, 2, 3, 4], [10, 20, 30, 40, 50]
    est, cov, low, high = verdict.shift_ci(a, b)
    # the narrowest [k-th smallest, k-th largest] of the 20 ratios b/a whose coverage 1 - 2 P(U < k) >= 95%
    k = max(k for k in range(1, 11) if 1 - 2 * counts[:k].sum() / counts.sum() >= 0.95)
    ratios = sorted(y / x for x in a for y in b)
    assert cov == pytest.approx(1 - 2 * counts[:k].sum() / counts.sum())
    assert (low, high) == pytest.approx((ratios[k - 1], ratios[-k])) and low < est < high


def test_change_calls_a_regression_and_not_noise():
    rng = np.random.default_rng(0)
    base = list(100 * np.exp(rng.normal(0, 0.03, 6)))
    slower = list(80 * np.exp(rng.normal(0, 0.03, 6)))
    same = list(100 * np.exp(rng.normal(0, 0.03, 6)))
    assert verdict.change("B/A", base, slower, 0.05)["change"] == "slower"
    assert verdict.change("B/A", base, same, 0.05)["change"] is None
    # times: lower is faster
    assert verdict.change("B/A", base, slower, 0.05, higher_is_faster=False)["change"] == "faster"
    few = verdict.change("B/A", base[:2], slower[:2], 0.05)
    assert few["change"] is None and few["text"].startswith("no verdict (2 and 2 rounds")


def test_false_alarms_stay_below_alpha_on_identical_experiments():
    rng = np.random.default_rng(1)
    alarms = sum(verdict.change("B/A", list(np.exp(rng.normal(0, 0.3, 6))), list(np.exp(rng.normal(0, 0.3, 6))),
                                0.0)["change"] is not None for _ in range(2000))
    assert alarms / 2000 <= verdict.ALPHA


def fake_exp(name: str, params: dict, machine: str = "m1", start: str = "2026-01-01T10:00:00+00:00",
             end: str = "2026-01-01T10:05:00+00:00") -> exps.Exp:
    return exps.Exp(name, "0" * 40, params, {"machine_name": machine, "cpu": "x", "cores_available": 2},
                    pd.DataFrame(), {"started_utc": start, "finished_utc": end})


def test_only_the_params_that_differ_are_shown():
    a = fake_exp("a", {"seed": 0, "train.batch_size": 64, "frameworks": ["torch"]})
    b = fake_exp("b", {"seed": 0, "train.batch_size": 128, "frameworks": ["torch"]})
    c = fake_exp("c", {"seed": 0, "train.batch_size": 64, "frameworks": ["torch", "numpy"]})
    assert compare.changed([a, b]) == ["train.batch_size"]
    assert compare.changed([a, b, c]) == ["frameworks", "train.batch_size"]
    assert compare.x_axis([a, b], ["train.batch_size"]) == ("train.batch_size", True)
    assert compare.x_axis([a, c], ["frameworks"]) == ("experiment", False)


def test_overlapping_measurements_on_one_machine_are_warned_about():
    a = fake_exp("a", {}, "m1", "2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00")
    b = fake_exp("b", {}, "m1", "2026-01-01T10:04:00+00:00", "2026-01-01T10:09:00+00:00")
    c = fake_exp("c", {}, "m2", "2026-01-01T10:04:00+00:00", "2026-01-01T10:09:00+00:00")  # another machine
    d = fake_exp("d", {}, "m1", "2026-01-01T10:05:00+00:00", "2026-01-01T10:09:00+00:00")  # right after a
    e = fake_exp("e", {}, "m1", "2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00")  # a's, from run cache
    warned = compare.overlaps([a, b, c, d, e])
    assert [w.split("`")[1:4:2] for w in warned] == [["a", "b"], ["a", "e"], ["b", "d"], ["b", "e"]]
    assert "dvc queue start -j 1" in warned[0] and "share one bench measurement" in warned[1]


SMALL = TINY | {"frameworks": ["numpy"], "models": ["mlp"], "bench.control": False, "bench.thread_counts": [2],
                "loaders.workers": [0]}


def test_experiments_from_two_machines_meet_through_git_and_a_dvc_remote(tmp_path):
    remote, store = tmp_path / "origin.git", tmp_path / "dvc-store"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    shutil.copytree(ROOT / "pipeline", seed / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / f, seed / f)
    write_params(seed / "params.yaml", **SMALL)
    sh(seed, "git", "init", "-q", "-b", "main")
    dvc(seed, "init", "-q")
    dvc(seed, "remote", "add", "-d", "store", str(store))
    sh(seed, "git", "add", "-A")
    sh(seed, "git", "commit", "-qm", "project")
    sh(seed, "git", "push", "-q", str(remote), "main")
    names = {}
    for machine in ("alpha", "beta"):  # two clones, each a machine of its own
        clone = tmp_path / machine
        sh(tmp_path, "git", "clone", "-q", str(remote), str(clone))
        env = ENV | {"MNIST_BENCH_MACHINE": machine}
        names[machine] = [f"{machine}-bs{bs}" for bs in (16, 64)]
        for bs, name in zip((16, 64), names[machine]):
            r = sh(clone, sys.executable, "-m", "dvc", "exp", "run", "-n", name, "-S", f"train.batch_size={bs}",
                   env=env)
            assert "Ran experiment" in r.stdout + r.stderr
        dvc(clone, "exp", "push", "origin", *names[machine])
    laptop = tmp_path / "laptop"
    sh(tmp_path, "git", "clone", "-q", str(remote), str(laptop))
    dvc(laptop, "exp", "pull", "origin", *names["alpha"], *names["beta"])
    assert any((laptop / ".dvc/cache").rglob("*")), "the experiments' cached outputs came through the DVC remote"
    # an old-format experiment is listed as skipped, not dropped: its commit lacks the files
    sh(laptop, sys.executable, "-m", "pipeline.report.compare", "--baseline", "alpha-bs16", "alpha-bs16", "alpha-bs64",
       "beta-bs16", "beta-bs64", "main")
    out = laptop / "reports/compare"
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["experiment"]) == {"alpha-bs16", "alpha-bs64", "beta-bs16", "beta-bs64"}
    assert list(rows.columns[3:4]) == ["train.batch_size"] and rows.columns[4] == "framework"  # only what changed
    assert {n: set(rows.loc[rows.experiment == n, "train.batch_size"].astype(int)) for n in ("alpha-bs16",
            "beta-bs64")} == {"alpha-bs16": {16}, "beta-bs64": {64}}
    machines = rows.groupby("experiment")["machine"].first()
    assert machines["alpha-bs64"].startswith("alpha (") and machines["beta-bs16"].startswith("beta (")
    for metric in ("train_samples_per_s", "train_pct_of_own_calib", "time_to_target_s", "test_acc",
                   "loader_best_samples_per_s"):
        assert (rows["metric"] == metric).groupby(rows["experiment"]).sum().eq(1).all(), metric
    md = (out / "summary.md").read_text()
    assert "| main " in md and "not in commit" in md  # the project commit has no results: skipped, with why
    verdicts = md[md.index("## Against the baseline"):md.index("## Headline")]
    lines = [line for line in verdicts.splitlines() if line.startswith("| alpha-bs64 ")]
    rate = next(line for line in lines if "training rate" in line)
    assert "| faster " in rate  # four times the batch: far more samples/s per step overhead, on any machine
    # tiny settings never reach the target: said, not hidden
    assert any("time to target" in line and "| no verdict " in line and "(0 and 0 seeds" in line for line in lines)
    assert "not reached" in md[md.index("**time to target"):]
    assert sum(line.startswith(("| alpha-bs64 ", "| beta-bs16 ", "| beta-bs64 ")) for line in
               verdicts.splitlines()) == 3 * 3  # 3 experiments x 3 measures (1 framework, 1 model)
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png"))) >= 5


def test_comparing_one_experiment_says_so_in_one_line(tmp_path, monkeypatch):
    one = fake_exp("only", {})
    monkeypatch.setattr(exps, "gather", lambda repo, names, all_commits: ([one], [exps.Skipped("old", "why")]))
    with pytest.raises(compare.DataError, match=r"^nothing to compare: only `only` has comparable results "
                                                r"\(1 skipped\)"):
        compare.main(["--out", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_the_machine_name_comes_from_the_environment_or_the_host(monkeypatch):
    import platform

    from pipeline.measure import env
    monkeypatch.setenv("MNIST_BENCH_MACHINE", "lab-box")
    assert env.fingerprint(2, "cpu")["machine_name"] == "lab-box"
    monkeypatch.delenv("MNIST_BENCH_MACHINE")
    assert env.fingerprint(2, "cpu")["machine_name"] == platform.node()
