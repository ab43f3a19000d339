"""End to end: `dvc repro` inside a temporary git repo holding a copy of the project."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.idx import write_idx
from tests.conftest import ROOT, tiny_idx, write_params

BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1",
       "TF_CPP_MIN_LOG_LEVEL": "2", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}
# bench.max_s 1: the first 6 rounds only (rounds measured again are test_bench's); the suite's time stays bounded
TINY = {"data.name": "digits", "mlp.hidden": [32], "cnn.channels": [4, 8], "cnn.dense": 32, "cnn.kernel": 3,
        "schedule.mlp.epochs": 2, "schedule.cnn.epochs": 1, "bench.warmup": 1, "bench.steps": 2,
        "bench.repeats": 3, "bench.calib_s": 0.05, "bench.min_repeat_s": 0, "bench.repeat_max_s": 1, "bench.max_s": 1,
        "bench.latency_calls": 20,
        "bench.infer_batch_sizes": [64],
        "bench.thread_counts": [1, 2], "loaders.workers": [0, 1], "loaders.warmup": 1,
        "loaders.batches": 2, "loaders.repeats": 3}


def sh(repo: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), cwd=repo, env=env or ENV, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "dvc", *args, check=check)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "proj"
    r.mkdir()
    shutil.copytree(ROOT / "pipeline", r / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / f, r / f)
    sh(r, "git", "init", "-q")
    dvc(r, "init", "-q")
    shutil.copytree(ROOT / ".dvc" / "plots", r / ".dvc" / "plots")  # the project's plot templates
    return r


def test_download_and_prepare_digits(repo):
    write_params(repo / "params.yaml", **{"data.name": "digits"})
    dvc(repo, "repro", "prepare")
    with np.load(repo / "data/prepared.npz") as f:
        meta = json.loads(str(f["meta"]))
        assert meta["dataset"] == "digits" and meta["image_shape"] == [8, 8, 1]
        assert sum(meta["sizes"].values()) == 1797 and f["x_val"].shape[1:] == (8, 8)
    assert "didn't change" in dvc(repo, "repro", "prepare").stdout  # a rerun re-uses everything


def test_idx_dataset_from_a_local_http_mirror(repo, tmp_path, http_server, refused_url):
    src = tmp_path / "mirror"
    src.mkdir()
    for name, arr in tiny_idx(n_train=50, n_test=10, size=12).items():
        write_idx(src / name, arr)
    http_server.handler.routes["/idx/"] = lambda h: (h.send_response(200), h.end_headers(),
                                                     h.wfile.write((src / h.path.split("/")[-1]).read_bytes()))
    write_params(repo / "params.yaml", **{"data.name": "idx", "data.mirrors": [refused_url, http_server.url + "/idx/"],
                                         "data.retries": 1, "data.val_fraction": 0.2})
    r = dvc(repo, "repro", "prepare")
    assert "no known checksums" in r.stdout + r.stderr
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    assert {v["mirror"] for v in manifest["files"].values()} == {http_server.url + "/idx/"}
    with np.load(repo / "data/prepared.npz") as f:
        assert f["x_train"].shape == (40, 12, 12) and f["x_test"].shape == (10, 12, 12)


def test_unreachable_mirrors_fail_download_with_the_all_mirrors_message(repo, refused_url):
    write_params(repo / "params.yaml", **{"data.mirrors": [refused_url], "data.retries": 1})
    r = dvc(repo, "repro", "download", check=False)
    assert r.returncode != 0
    line = next(l for l in (r.stdout + r.stderr).splitlines() if l.startswith("error: "))
    assert line.startswith(f"error: train-images-idx3-ubyte.gz: all 1 mirrors failed: [1] {refused_url}: "
                           "connection refused")
    assert not any((repo / "data/raw").glob("*.gz"))


def test_whole_pipeline_on_tiny_settings(repo):
    write_params(repo / "params.yaml", **TINY)
    dvc(repo, "repro")
    cells = [f"{f}-{m}" for f in ("torch", "tensorflow") for m in ("mlp", "cnn")]
    rec = json.loads((repo / "reports/bench/records.json").read_text())
    rows = rec["records"]
    bench = json.loads((repo / "reports/bench/metrics.json").read_text())
    for c in cells:
        for f in ("metrics.json", "history.tsv", "confusion.tsv", "per_class.tsv", "predictions.npz"):
            assert (repo / "reports/runs" / c / f).is_file()
        if c not in bench:  # the suite's other worker loads the machine: a cell whose every child was flagged has
            fw = c.split("-")[0]  # no figures, and the records say why
            assert all(r["flag"] for r in rows if r["kind"] == "round" and r["arm"] == fw), c
            continue
        b = bench[c]
        assert b["train_samples_per_s"] > 0 and b["latency_ms_p50"] <= b["latency_ms_p99"]
        assert all(isinstance(v, (int, float)) for v in b.values())  # numbers, units in the names, for dvc
    assert all(r["status"] == "ok" for r in rows)  # no default variant is ever "unsupported"
    assert {r["arm"] for r in rows if r["kind"] == "round"} == {"torch", "tensorflow", "torch*"}
    assert {(r["intra_op_threads"], r["inter_op_threads"]) for r in rows if r["kind"] == "round"} == {(2, 1)}
    assert {(r["framework"], r["threads"]) for r in rows if r["kind"] == "threads"} == {("torch", 1),
                                                                                        ("tensorflow", 1)}
    clean = {r["round"] for r in rows if r["kind"] == "round"} - {r["round"] for r in rows if r["flag"]}
    assert len(clean) == 6 or len(rec["flagged"]) > 0  # 6 clean rounds, unless the machine kept drifting
    control = [v for v in rec["verdicts"] if v["control"]]
    assert len(control) == 4 and all(v["b"] == "torch*" for v in control)
    assert list((repo / "models/tensorflow-cnn").iterdir())[0].name == "model.keras"
    import torch
    state = torch.load(repo / "models/torch-mlp/model.pt", weights_only=True)
    assert state["1.weight"].shape == (32, 64)
    md = (repo / "reports/summary.md").read_text()
    for section in ("## Accuracy", "## Speed", "## Variants", "## Thread scaling", "## Data loading",
                    "## Equivalence evidence"):
        assert section in md
    assert "A/A control" in md and "Machine stability" in md
    head = md[:md.index("## Time to target accuracy")]  # the verdicts first: one line per model, then the evidence
    assert head.count("): ") >= 2 and "**mlp** (PyTorch " in head and "Speed evidence: " in head
    assert "Not measured in this run: the variants child is opt-in" in md  # compile variants: opt-in, said so
    assert "Not measured in this run: scaling is opt-in" in md  # the scale stage ran and measured nothing
    metrics = next(iter(json.loads(dvc(repo, "metrics", "show", "--json").stdout).values()))["data"]
    assert list(metrics) == ["reports/headline.json"]  # DVC's metrics are the headline; the detail stays in outs
    head = metrics["reports/headline.json"]["data"]["headline"]
    assert "torch_vs_tensorflow_time_to_target_winner" in head["mlp"] and "torch_test_acc" in head["cnn"]
    dvc(repo, "plots", "show", "-o", "plots_html")  # what DVC's own tools draw: every declared plot
    html = (repo / "plots_html" / "index.html").read_text()
    assert "vegaEmbed('#reports_plots_val_acc_tsv'" in html  # frameworks overlaid, through .dvc/plots/frameworks.json
    assert all(f"vegaEmbed('#reports_runs_{c}_confusion_pairs_tsv'" in html for c in cells)
    assert {p.name for p in (repo / "plots_html" / "static").iterdir()} >= {
        "workspace_reports_figures_time_to_target.png", "workspace_reports_figures_rounds.png"}
    again = dvc(repo, "repro").stdout
    assert "Running stage 'env'" in again  # re-fingerprinted; same machine, same bytes, so nothing else runs
    assert [l for l in again.splitlines() if l.startswith("Running stage")] == ["Running stage 'env':"]
    # A training key re-runs only the cells that read it, plus the report.
    write_params(repo / "params.yaml", **TINY | {"schedule.cnn.epochs": 2})
    changed = set(json.loads(dvc(repo, "status", "--json").stdout)) - {"env"}  # env: always_changed by design
    assert changed == {"train@torch-cnn", "train@tensorflow-cnn", "report"}
    # A bench key re-runs only the bench stage.
    write_params(repo / "params.yaml", **TINY | {"bench.steps": 3})
    changed = set(json.loads(dvc(repo, "status", "--json").stdout)) - {"env"}
    assert changed == {"bench", "report"}
    # Another dataset's target leaves every train cell as it is (the report prints the whole params file)
    write_params(repo / "params.yaml", **TINY | {"target.fashion-mnist.mlp": 0.5})
    changed = set(json.loads(dvc(repo, "status", "--json").stdout)) - {"env"}
    assert changed == {"report"}


def test_train_without_prepared_data_names_the_stage_to_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--framework", "torch", "--model", "mlp",
                        "--data", str(tmp_path / "prepared.npz"), "--out", str(tmp_path / "out"), "--model-out",
                        str(tmp_path / "m"), "--params", str(ROOT / "params.yaml")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'prepared.npz'}: missing; run `dvc repro prepare` first"
    assert not (tmp_path / "out").exists()
