"""Every result file read back into typed records, and flattened into results.csv's rows.

`collect` reads what the stages left: a stage whose output is missing (not run, failed, stopped) is named in
`Results.missing` with the command that makes it, and its sections say so; a malformed file is a one-line error
naming it and the stage to rerun. `bench_rows`, `loader_rows`, `history_rows` give DataFrames; `tidy` gives
results.csv's rows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import records
from pipeline.backends import shown
from pipeline.errors import DataError
from pipeline.files import read_json
from pipeline.measure.verdict import Verdict
from pipeline.probe import speedo
from pipeline.probe.speedo import Calibration
from pipeline.records import (PHASES, BenchCell, Cell, CellMetrics, Measurement, framework_of, is_control, read,
                              setting_of)


@dataclass
class Results:
    frameworks: list[str]
    models: list[str]
    env: dict
    train: dict[Cell, CellMetrics] = field(default_factory=dict)   # metrics.json
    run: dict[Cell, dict] = field(default_factory=dict)            # run.json
    seeds: dict[Cell, pd.DataFrame] = field(default_factory=dict)
    history: dict[Cell, pd.DataFrame] = field(default_factory=dict)
    confusion: dict[Cell, pd.DataFrame] = field(default_factory=dict)
    preds: dict[Cell, dict[str, np.ndarray]] = field(default_factory=dict)
    bench: dict = field(default_factory=dict)                      # bench/records.json: rows, verdicts, calibration
    bench_cells: list[BenchCell] = field(default_factory=list)     # its per-cell figures
    measured: list[Measurement] = field(default_factory=list)      # its children's measurements, every kind
    verdicts: list[Verdict] = field(default_factory=list)          # its comparisons
    calibration: Calibration = field(default_factory=lambda: speedo.stability([]))  # its speedometer over the run
    scale_verdicts: list[Verdict] = field(default_factory=list)    # the scale stage's, per worker count

    def of_kind(self, kind: str) -> list[Measurement]:
        return [m for m in self.measured if m.kind == kind]
    loaders: dict[str, dict] = field(default_factory=dict)         # framework -> records.json
    scale: dict = field(default_factory=lambda: dict(NOT_MEASURED))  # scale/records.json ("measured": false: opt-in)
    missing: dict[str, str] = field(default_factory=dict)          # stage -> why its results are not here

    def cells(self) -> list[Cell]:
        return [Cell(f, m) for m in self.models for f in self.frameworks]

    def trained(self) -> list[Cell]:
        """The cells whose train stage left its results, in the run's order."""
        return [c for c in self.cells() if c in self.train]

    def lacks(self, *stages: str) -> str:
        """Why any of `stages` left nothing ("" when all did), for a line in place of what they would show."""
        return "; ".join(self.missing[s] for s in stages if s in self.missing)


def read_tsv(path: Path, stage: str, columns: list[str], index: bool = False) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: missing; run `dvc repro {stage}` first")
    try:
        df = pd.read_csv(path, sep="\t", index_col=0 if index else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed TSV ({str(e).splitlines()[0]}); rerun `dvc repro {stage}`") from None
    missing = [c for c in columns if c not in df.columns]
    if missing or df.empty:
        raise DataError(f"{path}: malformed ({'no rows' if df.empty else 'missing columns ' + ', '.join(missing)}); "
                        f"rerun `dvc repro {stage}`")
    return df


def _need(d: dict, keys: list[str], path: Path, stage: str) -> dict:
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{path}: malformed (missing {', '.join(missing)}); rerun `dvc repro {stage}`")
    return d


# What each train cell's backend read back from its framework (run.json key by name): the equivalence table
# compares them between the frameworks of a model
RUN_SETTINGS = {"device": "device", "precision": "precision", "threads": "intra_op_threads"}


# What the bench would have written with no usable child at all: nothing measured, so every verdict is absent
NO_BENCH = {"records": [], "cells": [], "verdicts": [], "flagged": [], "rounds_run": 0, "max_s": float("nan"),
            "min_effect": float("nan"), "calibration": asdict(speedo.stability([]))}
NOT_MEASURED = {"measured": False, "rows": [], "table": [], "verdicts": []}


def _absent(r: Results, path: Path, stage: str) -> bool:
    """Whether `path` (a stage's last-written file: its presence means the rest is there) is missing; if so the
    stage is named in r.missing with what makes it."""
    if path.exists():
        return False
    r.missing[stage] = f"`{stage}` left no results ({path} is missing: run `dvc repro {stage}`)"
    return True


def collect(root: Path, frameworks: list[str], models: list[str]) -> Results:
    r = Results(frameworks, models, {})
    if not _absent(r, root / "env.json", "env"):
        r.env = read_json(root / "env.json", "env")
    for cell in r.cells():
        d, stage = root / "runs" / str(cell), f"train@{cell}"
        if _absent(r, d / "metrics.json", stage):  # written last: without it the cell did not finish
            continue
        r.train[cell] = read(CellMetrics, read_json(d / "metrics.json", stage), d / "metrics.json", stage)
        r.run[cell] = _need(read_json(d / "run.json", stage), ["init_weights_sha256", "batch_order_sha256",
                                                             "layer_param_counts", "readback_weights_sha256",
                                                             "eval_every", "batch_size", *RUN_SETTINGS.values()],
                            d / "run.json", stage)
        r.seeds[cell] = read_tsv(d / "seeds.tsv", stage, ["seed", "test_acc", "reached", "time_to_target_s",
                                                         "steps_to_target"])
        r.history[cell] = read_tsv(d / "history.tsv", stage, ["step", "epoch", "train_loss", "train_acc", "train_s",
                                                              "val_loss", "val_acc"])
        r.confusion[cell] = read_tsv(d / "confusion.tsv", stage, [], index=True)
        try:
            with np.load(d / "predictions.npz", allow_pickle=False) as f:
                r.preds[cell] = {k: f[k] for k in ("y_true", "y_pred", "init_logits")}
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{d / 'predictions.npz'}: unreadable ({e}); rerun `dvc repro {stage}`") from None
    path = root / "bench" / "records.json"
    r.bench = dict(NO_BENCH) if _absent(r, path, "bench") else _need(read_json(path, "bench"), [
        "records", "cells", "verdicts", "calibration", "flagged", "rounds_run", "max_s"], path, "bench")
    r.bench_cells = [BenchCell.from_flat(c, path) for c in r.bench["cells"]]
    r.measured = [Measurement.from_flat(m) for m in r.bench["records"]]
    r.verdicts = [read(Verdict, v, path, "bench") for v in r.bench["verdicts"]]
    r.calibration = read(Calibration, r.bench["calibration"], path, "bench")
    for fw in frameworks:
        p = root / "loaders" / fw / "records.json"
        if not _absent(r, p, f"loaders@{fw}"):
            r.loaders[fw] = _need(read_json(p, f"loaders@{fw}"), ["records"], p, f"loaders@{fw}")
    path = root / "scale" / "records.json"
    if not _absent(r, path, "scale"):
        r.scale = _need(read_json(path, "scale"), ["measured", "table", "verdicts", "rows"], path, "scale")
        r.scale_verdicts = [read(Verdict, v, path, "scale") for v in r.scale["verdicts"]]
    return r


def gpus(r: Results) -> list[str]:
    """The GPUs the bench's children ran on ([] on a CPU), by records.gpus' rule."""
    return records.gpus(r.measured)


def bench_rows(r: Results) -> pd.DataFrame:
    """Every benchmark child's row: kind (round | variants | threads), round, arm, framework, model, variant, ...
    (the same columns, and no rows, when the bench left none)."""
    rows = r.bench["records"]
    return pd.DataFrame(rows, columns=None if rows else list(Measurement("", "").flat()) + ["train_samples_per_s"])


LOADER = ["framework", "workers", "what", "samples_per_s", "samples_per_s_q1", "samples_per_s_q3",
          "samples_per_s_iqr", "repeats"]


def loader_rows(r: Results) -> pd.DataFrame:
    return pd.DataFrame([{"framework": fw, **rec} for fw, d in r.loaders.items() for rec in d["records"]],
                        columns=None if any(d["records"] for d in r.loaders.values()) else LOADER)


HISTORY = ["framework", "model", "step", "epoch", "train_loss", "train_acc", "train_s", "val_loss", "val_acc"]


def history_rows(r: Results) -> pd.DataFrame:
    """Every cell's evaluations, one row each (no rows, and the same columns, when no cell trained)."""
    return pd.concat([pd.DataFrame(columns=HISTORY)] + [h.assign(framework=c.framework, model=c.model)
                                                       for c, h in r.history.items()], ignore_index=True)


def tidy(r: Results) -> pd.DataFrame:
    """One row per measurement: framework, model, source, metric, value, unit, spread, n, and its context."""
    out = []
    for cell, m in r.train.items():
        base = {"framework": cell.framework, "model": cell.model, "source": "train"}
        out += [base | {"metric": "test_acc", "value": m.test_acc, "unit": "fraction",
                        "spread": m.test_acc_std, "spread_kind": "std over seeds", "n": m.seeds},
                base | {"metric": "time_to_target_s", "value": m.time_to_target_s, "unit": "s",
                        "low": m.time_to_target_s_min, "high": m.time_to_target_s_max,
                        "spread_kind": "range over seeds that reached it", "n": m.reached_seeds,
                        "note": f"target val acc {m.target_val_acc}"},
                base | {"metric": "train_time_s", "value": m.train_time_s, "unit": "s"},
                base | {"metric": "train_samples_per_s", "value": m.train_samples_per_s, "unit": "samples/s"},
                base | {"metric": "params", "value": m.params, "unit": "count"},
                base | {"metric": "diverged_seeds", "value": m.diverged_seeds, "unit": "count",
                        "note": "loss stopped being finite; training stopped there"}]
        out += [base | {"metric": "test_acc", "value": s.test_acc, "unit": "fraction", "seed": int(s.seed)}
                for s in r.seeds[cell].itertuples()]
    spread = "IQR over rounds (fresh processes)"
    for c in r.bench_cells:
        ctx = {"framework": c.framework, "model": c.model, "source": "bench", "n": c.rounds}
        for phase in PHASES:
            s = getattr(c, phase)
            out += [ctx | {"metric": f"{phase}_samples_per_s", "value": s.samples_per_s, "unit": "samples/s",
                           "low": s.samples_per_s_q1, "spread": s.samples_per_s_q3 - s.samples_per_s_q1,
                           "high": s.samples_per_s_q3, "spread_kind": spread},
                    ctx | {"metric": f"{phase}_pct_of_peak", "value": s.pct_of_peak,
                           "unit": "% of the run's calibration GEMM"},
                    ctx | {"metric": f"{phase}_pct_of_own_calib", "value": s.pct_of_own_calib,
                           "unit": "% of each child's own calibration GEMM"}]
        out += [ctx | {"metric": f"latency_ms_{q}", "value": getattr(c, f"latency_ms_{q}"), "unit": "ms"}
                for q in ("p50", "p95", "p99")]
    out += [_verdict_row(v, "bench") for v in r.verdicts]
    cal = r.calibration
    if cal.n:  # a bench that left no calibration (it did not run) has no figure for it
        out.append({"source": "bench", "metric": "calib_gflops", "value": cal.gflops_median, "unit": "GFLOP/s",
                    "low": cal.gflops_q1, "high": cal.gflops_q3, "spread_kind": "IQR over every calibration",
                    "n": cal.n, "note": f"CV {cal.cv_pct:.1f}%"})
    for m in r.of_kind("variants"):
        ctx = {"framework": m.framework, "model": m.model, "variant": m.variant, "threads": m.threads,
               "source": "bench-variants"}
        if m.status != "ok":
            out.append(ctx | {"metric": "train_status", "value": np.nan, "unit": "", "note": m.reason})
            continue
        out += [ctx | {"metric": "train_samples_per_s", "value": m.train.samples_per_s, "unit": "samples/s",
                       "spread": m.train.samples_per_s_iqr, "spread_kind": "IQR over repeats, one process",
                       "n": m.train.repeats},
                ctx | {"metric": "first_step_s", "value": m.first_step_s, "unit": "s"}]
    for rec in loader_rows(r).to_dict("records"):
        out.append({"framework": rec["framework"], "source": "loaders", "metric": f"{rec['what']}_samples_per_s",
                    "workers": rec["workers"], "value": rec["samples_per_s"], "unit": "samples/s",
                    "spread": rec["samples_per_s_iqr"], "spread_kind": "IQR over repeats", "n": rec["repeats"]})
    out += _scale_rows(r.scale) + [_verdict_row(v, "scale") for v in r.scale_verdicts]
    cols = ["framework", "model", "source", "metric", "value", "unit", "spread", "low", "high", "spread_kind", "n",
            "seed", "variant", "threads", "workers", "note"]
    return pd.DataFrame(out).reindex(columns=cols)


def _scale_rows(s: dict) -> list[dict]:
    """The scale stage's figures per framework, model and worker count, and its verdicts (none when opt-out)."""
    out = []
    for t in s.get("table", []):
        ctx = {"framework": t["framework"], "model": t["model"], "source": "scale", "workers": t["workers"],
               "n": t["rounds"]}
        out += [ctx | {"metric": "train_samples_per_s", "value": t["samples_per_s"], "unit": "samples/s",
                       "low": t["samples_per_s_q1"], "high": t["samples_per_s_q3"],
                       "spread_kind": "IQR over rounds (fresh launches)"},
                ctx | {"metric": "efficiency", "value": t["efficiency"], "unit": "rate(N) / (N x rate(1))",
                       "low": t["efficiency_ci_low"], "high": t["efficiency_ci_high"],
                       "spread_kind": "CI of the median over rounds"},
                ctx | {"metric": "allreduce_share", "value": t["comm_share"], "unit": "fraction of a step",
                       "note": "one step's gradients all-reduced alone"}]
    return out


def _verdict_row(v: Verdict, source: str) -> dict:
    """A verdict as results.csv's row: the ratio a/b with its interval and the text."""
    return {"framework": f"{v.a}/{v.b}", "model": v.model, "source": source, "workers": v.workers,
            "metric": f"{v.phase}_ratio", "value": v.ratio, "unit": "x", "low": v.ci_low, "high": v.ci_high,
            "spread_kind": f"{100 * v.coverage:.1f}% CI of the median ratio" if math.isfinite(v.coverage) else "",
            "n": v.rounds, "note": v.text}


def pairs(r: Results) -> list[tuple[str, Cell, Cell]]:
    """(model, cell A, cell B): each pair of frameworks, in the params' order, per model (as the bench compares)."""
    fws = r.frameworks
    return [(m, Cell(a, m), Cell(b, m)) for m in r.models for i, a in enumerate(fws) for b in fws[i + 1:]]


def pair_label(ca: Cell, cb: Cell) -> str:
    """"PyTorch vs TensorFlow": how a comparison is named in the report."""
    return f"{shown(ca.framework)} vs {shown(cb.framework)}"


def arm_label(arm: str) -> str:
    """An arm as the report names it: the framework as readers know it, `again` for the A/A control, a setting arm's
    value."""
    setting = setting_of(arm)
    return (shown(framework_of(arm)) + (" again" if is_control(arm) else "")
            + (f" at {setting[0]}={setting[1]}" if setting else ""))


def children(rows: list[Measurement]) -> dict[tuple, list[Measurement]]:
    """The rows of each child (kind, round, arm): one process, whose time and readings its rows share."""
    out: dict[tuple, list[Measurement]] = {}
    for m in rows:
        out.setdefault((m.kind, m.round, m.arm), []).append(m)
    return out
