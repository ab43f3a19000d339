"""The train stage as a whole, in-process on tiny data: outputs, and a failed write leaving no headline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.data import idx
from pipeline.data.prepare import prepare, write_prepared
from pipeline.errors import DataError
from pipeline.stages import train as stage
from tests.conftest import tiny_idx, write_params

TINY = {"mlp.hidden": [8], "schedule.mlp.epochs": 1, "train.batch_size": 16, "threads": 1}


@pytest.fixture
def prepared(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, arr in tiny_idx(n_train=60, n_test=20, size=8).items():
        idx.write_idx(raw / name, arr)
    meta = write_prepared(tmp_path / "prepared.npz", prepare(raw, None, 0.2, 0), "idx")
    assert meta == {"dataset": "idx", "image_shape": [8, 8, 1], "sizes": {"train": 48, "val": 12, "test": 20}}
    write_params(tmp_path / "params.yaml", **TINY)
    return tmp_path


def run(tmp_path):
    stage.main(["--framework", "torch", "--model", "mlp", "--data", str(tmp_path / "prepared.npz"),
                "--out", str(tmp_path / "out"), "--model-out", str(tmp_path / "model"),
                "--params", str(tmp_path / "params.yaml")])


def test_train_stage_writes_every_output(prepared):
    run(prepared)
    names = {p.name for p in (prepared / "out").iterdir()}
    assert names == {"metrics.json", "run.json", "history.tsv", "seeds.tsv", "per_class.tsv", "confusion.tsv",
                     "predictions.npz", "confusion_pairs.tsv"}
    m = json.loads((prepared / "out" / "metrics.json").read_text())
    # the long-form confusion DVC's template draws: one row per test image, summing to the wide matrix
    pairs = pd.read_csv(prepared / "out" / "confusion_pairs.tsv", sep="\t", dtype=str)
    wide = pd.read_csv(prepared / "out" / "confusion.tsv", sep="\t", index_col=0)
    assert list(pairs.columns) == ["actual", "predicted"] and len(pairs) == 20
    counted = pd.crosstab(pairs["actual"], pairs["predicted"]).reindex(index=wide.index.astype(str),
                                                                       columns=wide.columns, fill_value=0)
    np.testing.assert_array_equal(counted.to_numpy(), wide.to_numpy())
    assert 0 <= m["test_acc"] <= 1 and m["test_samples"] == 20 and m["params"] == 64 * 8 + 8 + 8 * 10 + 10
    # the images every validation accuracy was read on: the noise the report's curve test allows
    assert json.loads((prepared / "out" / "run.json").read_text())["val_samples"] == 12


def test_full_disk_while_saving_the_model_leaves_no_metrics(prepared, monkeypatch):
    import errno
    from pathlib import Path

    real = Path.write_bytes

    def full(self, data):  # the disk fills while the model's bytes are written (torch's own writer said only
        if ".model.pt." in self.name:  # "unexpected pos 134720 vs 134608" there)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DataError) as e:
        run(prepared)
    assert str(e.value) == f"{prepared / 'model' / 'model.pt'}: cannot write (no space left on device)"
    assert not (prepared / "out" / "metrics.json").exists() and not (prepared / "out" / "run.json").exists()
    assert not (prepared / "model" / "model.pt").exists()


def test_full_disk_on_a_table_leaves_no_metrics(prepared, monkeypatch):
    import errno

    import pandas as pd

    real = pd.DataFrame.to_csv

    def full_for_seeds(self, path, *a, **k):
        if ".seeds.tsv." in str(path):  # the temp file beside seeds.tsv
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)
    monkeypatch.setattr(pd.DataFrame, "to_csv", full_for_seeds)
    with pytest.raises(DataError) as e:
        run(prepared)
    assert str(e.value) == f"{prepared / 'out' / 'seeds.tsv'}: cannot write (no space left on device)"
    assert not (prepared / "out" / "metrics.json").exists()
    assert not any(p.name.startswith(".") for p in (prepared / "out").iterdir())  # no temp files left


def test_a_diverging_run_stops_and_is_marked_diverged_not_slow(prepared, caplog):
    """SGD at lr 1e6: the loss turns non-finite; training stops at that evaluation instead of running to the epoch
    cap, one line names the cell, seed and step, and the metrics say diverged (distinct from "not reached")."""
    write_params(prepared / "params.yaml", **(TINY | {"train.optimizer": "sgd", "schedule.mlp.lr": 1.0e6,
                                                      "schedule.mlp.epochs": 10, "train.eval_every_samples": 16}))
    with caplog.at_level("WARNING", logger="train"):
        run(prepared)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and lines[0].startswith("torch-mlp seed 0: training diverged at step ")
    step = int(lines[0].split("at step ")[1].split()[0])
    m = json.loads((prepared / "out" / "metrics.json").read_text())
    assert m["diverged_seeds"] == 1 and m["reached_seeds"] == 0 and m["time_to_target_s"] is None
    seeds = pd.read_csv(prepared / "out" / "seeds.tsv", sep="\t")
    assert bool(seeds["diverged"][0]) and seeds["diverged_at_step"][0] == step
    history = pd.read_csv(prepared / "out" / "history.tsv", sep="\t")
    assert history["step"].iloc[-1] == step < 10 * (48 // 16)  # stopped there, far before the 10-epoch cap
    assert history["val_acc"].iloc[:-1].notna().all() and np.isnan(history["val_acc"].iloc[-1])


def test_seeds_share_the_placed_data_and_each_trains_as_it_would_alone(prepared, monkeypatch):
    # the data is put on the device once per cell, and no seed's training changes what the next one reads:
    # seed 1 of a 3-seed cell gives seed 1's results of a cell that starts at seed 1
    from pipeline.backends.torch import backend as torch_backend
    cls = torch_backend.BACKEND
    real, calls = cls.put, []
    monkeypatch.setattr(cls, "put", lambda self, x, y: calls.append(len(y)) or real(self, x, y))
    write_params(prepared / "params.yaml", **TINY, **{"train.repeats": 3})
    run(prepared)
    assert calls == [48, 12, 20, 12]  # train, validation, test once for three seeds; the evidence's images
    three = pd.read_csv(prepared / "out" / "seeds.tsv", sep="\t")
    write_params(prepared / "params.yaml", **TINY, **{"train.repeats": 1, "seed": 1})
    run(prepared)
    alone = pd.read_csv(prepared / "out" / "seeds.tsv", sep="\t")
    assert three["seed"].tolist() == [0, 1, 2] and alone["seed"].tolist() == [1]
    same = ["test_acc", "test_loss", "val_acc", "steps_to_target", "best_val_acc", "epochs_trained"]
    pd.testing.assert_frame_equal(three.loc[three["seed"] == 1, same].reset_index(drop=True), alone[same])


def test_the_first_seed_does_not_pay_the_process_one_off_costs(prepared, monkeypatch):
    # a process's first step is slow (CUDA and library start on a GPU): made so here, it must land in the untimed
    # warm-up, not in seed 0's training clock, so seed 0's time to target is comparable with later seeds'
    import time

    from pipeline.backends.torch import backend as torch_backend
    cls = torch_backend.BACKEND
    real, slowed = cls.make_step, []

    def make_step(self, *a, **k):
        step = real(self, *a, **k)

        def first_slow(xb, yb, keep=None):
            if not slowed:
                slowed.append(time.perf_counter())
                time.sleep(0.6)
            return step(xb, yb, keep)
        return first_slow
    monkeypatch.setattr(cls, "make_step", make_step)
    from pipeline.train import cell
    started, train = [], cell.train

    def timed_train(*a, **k):  # each seed's training clock starts in here
        started.append(time.perf_counter())
        return train(*a, **k)
    monkeypatch.setattr(cell, "train", timed_train)
    run(prepared)
    assert len(slowed) == 1 and len(started) == 1 and slowed[0] < started[0]  # the slow step came before seed 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin the stage to one")
def test_threads_0_is_one_explicit_count_for_every_framework(prepared):
    # 0 = all cores, resolved by the pipeline: left to each framework under a one-core affinity mask (containers,
    # batch schedulers), the stage recorded 1 intra-op thread for PyTorch and 2 for TensorFlow
    write_params(prepared / "params.yaml", **TINY | {"threads": 0})
    got = {}
    for fw in ("torch", "tensorflow"):
        out = prepared / f"out-{fw}"
        subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--framework", fw, "--model", "mlp",
                        "--data", str(prepared / "prepared.npz"), "--out", str(out), "--model-out",
                        str(prepared / f"model-{fw}"), "--params", str(prepared / "params.yaml")],
                       check=True, capture_output=True, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
        got[fw] = json.loads((out / "run.json").read_text())["intra_op_threads"]
    assert got == {"torch": 1, "tensorflow": 1}
