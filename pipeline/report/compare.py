"""Compare DVC experiments across params and machines (`make compare`).

    python -m pipeline.report.compare [EXP ...] [--baseline EXP] [--all] [--out reports/compare]

Reads each experiment's committed results (exps.py) and writes summary.md, results.csv (tidy rows with
experiment, machine and the changed params as columns) and a self-contained index.html. Verdicts against the
baseline use the same honesty rules as one run, adapted to runs that were not interleaved: the per-round rates of
the two experiments compared as two independent samples (verdict.change: Hodges-Lehmann ratio, exact Mann-Whitney
interval), raw and divided by each process's own calibration GEMM; on one machine both must show the change.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import files
from pipeline.backends import shown
from pipeline.errors import DataError
from pipeline.measure import rounds, verdict
from pipeline.records import Cell, Measurement
from pipeline.report import exps, figures, gates, render

log = logging.getLogger("compare")
# metric in results.csv -> (what the report calls it, source, higher is better)
HEADLINE = {"time_to_target_s": ("time to target, s", "train", False),
            "train_samples_per_s": ("training samples/s", "bench", True),
            "train_pct_of_own_calib": ("training, % of own calibration GEMM", "bench", True),
            "infer_samples_per_s": ("inference samples/s (largest batch)", "bench", True),
            "latency_ms_p50": ("batch-1 latency p50, ms", "bench", False),
            "test_acc": ("test accuracy", "train", True),
            "loader_best_samples_per_s": ("data loader alone, best setting, samples/s", "loaders", True)}


def changed(found: list[exps.Exp]) -> list[str]:
    """The params that differ between the experiments (a key absent in some counts as differing)."""
    keys = sorted({k for e in found for k in e.params})
    return [k for k in keys if len({repr(e.params.get(k)) for e in found}) > 1]


def _rows(e: exps.Exp) -> pd.DataFrame:
    """The headline rows of one experiment's results.csv (aggregates only; loaders reduced to the best setting)."""
    r = e.results
    r = r[r["seed"].isna() & ~r["framework"].astype(str).str.contains("/")]
    keep = r[[HEADLINE.get(m, ("", ""))[1] == s for m, s in zip(r["metric"], r["source"])]]
    load = r[(r["source"] == "loaders") & (r["metric"] == "loader_samples_per_s")]
    if len(load):
        best = load.loc[load.groupby("framework")["value"].idxmax()].copy()
        best["metric"], best["note"] = "loader_best_samples_per_s", "best at workers=" + best["workers"].astype(str)
        keep = pd.concat([keep, best])
    keep["low"] = keep["low"].where(keep["low"].notna(), keep["value"] - keep["spread"].fillna(0))
    keep["high"] = keep["high"].where(keep["high"].notna(), keep["value"] + keep["spread"].fillna(0))
    return keep


def tidy(found: list[exps.Exp], keys: list[str]) -> pd.DataFrame:
    out = []
    for e in found:
        rows = _rows(e).assign(experiment=e.name, machine=e.machine, rev=e.rev[:7],
                               **{k: str(e.params.get(k)) for k in keys})
        out.append(rows)
    cols = ["experiment", "machine", "rev", *keys, "framework", "model", "source", "metric", "value", "unit", "low",
            "high", "spread_kind", "n", "note"]
    return pd.concat(out, ignore_index=True).reindex(columns=cols)


def per_round(e: exps.Exp, fw: str, model: str, phase: str, calibrated: bool) -> list[float]:
    """One experiment's per-round rates of one cell; `calibrated`: each over its own process's calibration GEMM
    (GFLOP/s), which takes out the machine's speed at that moment."""
    return [r.rate(phase) / (r.own_calib_gflops() if calibrated else 1.0)
            for r in rounds.usable([Measurement.from_flat(d) for d in e.bench["records"]])
            if r.arm == fw and r.model == model and r.status == "ok"]


def rate_verdict(base: exps.Exp, e: exps.Exp, fw: str, model: str, phase: str,
                 min_effect: float) -> tuple[verdict.Change, verdict.Change]:
    """Raw and calibrated rates must agree. Two experiments ran at different times: on one machine a change is
    called only when the raw rates and the calibration-normalised ones both show it (a change in raw rates that the
    GEMM also saw is the machine drifting; a calibrated change the raw rates do not show is a GEMM that work bound
    by Python overheads does not follow). Across machines the raw rates are the comparison (the machine is the
    change), the calibrated ratio shown beside them."""
    name = f"{e.name}/{base.name}"
    raw, cal = (verdict.change(name, per_round(base, fw, model, phase, c), per_round(e, fw, model, phase, c),
                               min_effect) for c in (False, True))
    if base.machine != e.machine:
        return replace(raw, text=f"{raw.text}; different machines, raw rates"), cal
    if raw.change != cal.change:
        return replace(raw, change=None, text=f"no clear difference: raw {raw.text}, but calibrated {cal.text}; the "
                                              "machine's speed moved between the experiments"), cal
    return raw, cal


def verdicts(found: list[exps.Exp], base: exps.Exp) -> pd.DataFrame:
    """Each experiment against the baseline, per framework, model and measure."""
    min_effect = float(base.params.get("bench.min_effect", 0.05))
    out = []
    for e in found:
        if e is base:
            continue
        for fw in [f for f in e.bench["frameworks"] if f in base.bench["frameworks"]]:
            for model in [m for m in e.bench["models"] if m in base.bench["models"]]:
                cell = Cell(fw, model)
                said = {"training rate": rate_verdict(base, e, fw, model, "train", min_effect),
                        "inference rate": rate_verdict(base, e, fw, model, "infer", min_effect),
                        "time to target": (verdict.change(f"{e.name}/{base.name}", _reached(base, cell),
                                                          _reached(e, cell), min_effect, False, "seeds"), None)}
                for measure, (v, cal) in said.items():
                    out.append({"experiment": e.name, "baseline": base.name, "framework": shown(fw),
                                "model": model, "measure": measure, "ratio": v.ratio, "ci_low": v.ci_low,
                                "ci_high": v.ci_high, "cal_ratio": cal.ratio if cal else np.nan,
                                "cal_low": cal.ci_low if cal else np.nan, "cal_high": cal.ci_high if cal else np.nan,
                                "change": v.change or ("no verdict" if "no verdict" in v.text else
                                                       "no clear difference"), "verdict": v.text})
    return pd.DataFrame(out)


def gated_verdicts(found: list[exps.Exp], base: exps.Exp, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """verdicts() through the two drift gates (gates.py): the repeat of the baseline, and the measures the
    changed params cannot touch."""
    changed_by = {e.name: [k for k in keys if repr(e.params.get(k)) != repr(base.params.get(k))]
                  for e in found if e is not base}
    # a repeat is a control only if it was measured again (not restored from DVC's run cache) on the same machine
    repeats = [e.name for e in found if e is not base and gates.is_repeat(e.params, base.params)
               and e.machine == base.machine and e.bench["started_utc"] != base.bench["started_utc"]]
    return gates.apply(verdicts(found, base), changed_by, repeats)


def _reached(e: exps.Exp, cell: Cell) -> list[float]:
    s = e.seeds[cell]
    return list(s.loc[s["reached"].astype(bool), "time_to_target_s"].astype(float))


def overlaps(found: list[exps.Exp]) -> list[str]:
    """Experiments on the same machine whose bench measurements ran at the same time (parallel queue workers
    share the cores: both sets of timings are spoiled), and those that share one measurement (DVC's run cache)."""
    out = []
    span = {e.name: (datetime.fromisoformat(e.bench["started_utc"]), datetime.fromisoformat(e.bench["finished_utc"]))
            for e in found}
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            (s1, f1), (s2, f2) = span[a.name], span[b.name]
            if a.machine != b.machine:
                continue
            if (s1, f1) == (s2, f2):  # not an overlap: DVC restored one bench run (its run cache) for both
                out.append(f"`{a.name}` and `{b.name}` share one bench measurement (the bench params did not change, "
                           "so DVC restored it from its run cache): their speed figures are the same numbers.")
            elif s1 < f2 and s2 < f1:
                out.append(f"**Warning**: `{a.name}` and `{b.name}` measured on the same machine at overlapping times "
                           f"({s1:%H:%M}–{f1:%H:%M} and {s2:%H:%M}–{f2:%H:%M} UTC): their timings competed for the "
                           "cores. Run queues with one worker (`dvc queue start -j 1`).")
    return out


def x_axis(found: list[exps.Exp], keys: list[str]) -> tuple[str, bool]:
    """The figures' x: the one varied param when it is numeric, else the experiment (in creation order)."""
    if len(keys) == 1 and all(isinstance(e.params.get(keys[0]), (int, float)) for e in found):
        return keys[0], True
    return "experiment", False


def _ratios(r: pd.Series, low: pd.Series, high: pd.Series) -> list[str]:
    return [f"{x:.2f}x [{lo:.2f}–{hi:.2f}]" if np.isfinite(x) else "—" for x, lo, hi in zip(r, low, high)]


def _cell(value: float, low: float, high: float) -> str:
    """A headline figure with its spread, if it has one; a time to target never reached says so."""
    if not np.isfinite(value):
        return "not reached"
    spread = f" [{render.num(low)}–{render.num(high)}]" if np.isfinite(low) and low != high else ""
    return render.num(value) + spread


def build(found: list[exps.Exp], skipped: list[exps.Skipped], base: exps.Exp,
          figdir: Path) -> tuple[list, pd.DataFrame]:
    keys = changed(found)
    rows = tidy(found, keys)
    v, gate_lines = gated_verdicts(found, base, keys)
    x, numeric = x_axis(found, keys)
    machines = pd.DataFrame([{"experiment": e.name, "machine": e.machine, "commit": e.rev[:7],
                              **{k: e.params.get(k) for k in keys},
                              "calibration GFLOP/s": e.bench["calibration"]["gflops_median"],
                              "calibration CV %": e.bench["calibration"]["cv_pct"],
                              "measured (UTC)": f"{e.bench['started_utc'][:16]} → {e.bench['finished_utc'][11:16]}"}
                             for e in found])
    B: list = [("h1", f"mnist-bench: {len(found)} experiments compared"),
               ("p", f"Baseline: `{base.name}`. Params that differ: "
                     f"{', '.join(f'`{k}`' for k in keys) or 'none (same params; machines or times differ)'}. "
                     "Rates are medians over each experiment's usable rounds with their IQR; `% of own calibration` "
                     "divides every process's rate by the GEMM it measured beside it, so machines and moments of "
                     "different speed compare (a CPU figure: on a GPU it measures the host).")]
    B += [("p", w) for w in overlaps(found)]
    if skipped:
        B += [("h2", "Skipped"), ("table", pd.DataFrame([{"experiment": s.name, "reason": s.reason}
                                                         for s in skipped]))]
    B += [("h2", "Experiments and machines"), ("table", machines)]
    if len(v):
        listed = v.assign(ratio=_ratios(v.ratio, v.ci_low, v.ci_high),
                          calibrated=_ratios(v.cal_ratio, v.cal_low, v.cal_high))
        B += [("h2", f"Against the baseline `{base.name}`"),
              ("p", "Ratio = this experiment over the baseline, with its interval: per-round rates compared as two "
                    "independent samples (the experiments were not interleaved); calibrated: each rate over its own "
                    "process's calibration GEMM. \"faster\"/\"slower\" only when the interval excludes 1, the change "
                    f"is at least `bench.min_effect` ({base.params.get('bench.min_effect')}) and, on one machine, the "
                    "raw and the calibrated rates agree. Time to target: seconds per seed that reached it (a ratio "
                    "below 1 is faster)."),
              *[("p", line) for line in gate_lines],
              ("table", listed[["experiment", "framework", "model", "measure", "change", "ratio", "calibrated",
                                "verdict"]])]
    B.append(("h2", "Headline metrics"))
    for metric, (label, _, higher) in HEADLINE.items():
        sub = rows[rows["metric"] == metric]
        if sub.empty:
            continue
        sub = sub.assign(framework=sub["framework"].map(shown))
        table = sub.assign(cell=[_cell(val, lo, hi) for val, lo, hi in zip(sub.value, sub.low, sub.high)],
                           model=sub["model"].fillna("—"))
        B += [("p", f"**{label}** ({'higher' if higher else 'lower'} is better): median [spread]"),
              ("table", table.pivot_table(index=["framework", "model"], columns="experiment", values="cell",
                                          aggfunc="first", sort=False).reset_index()),
              ("img", figures.against(sub, x, numeric, label, figdir / f"{metric}.png"),
               f"{label} against {x}; one line per framework, bars: spread; marker: machine")]
    return B, rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exps", nargs="*", metavar="EXP", help="experiment names or git revisions (default: the "
                                                            "current commit's experiments)")
    ap.add_argument("--baseline", help="the experiment the others are judged against (default: the first)")
    ap.add_argument("--all", action="store_true", help="every experiment of every commit (all machines' pulled)")
    ap.add_argument("--out", type=Path, default=Path("reports/compare"), help="output directory")
    ap.add_argument("--repo", type=Path, default=Path("."), help="the git/DVC repository")
    a = ap.parse_args(argv)
    found, skipped = exps.gather(a.repo, a.exps, a.all)
    for s in skipped:
        log.warning("skipped %s: %s", s.name, s.reason)
    if len(found) < 2:
        what = f"only `{found[0].name}` has comparable results" if found else "no experiment has comparable results"
        raise DataError(f"nothing to compare: {what} ({len(skipped)} skipped); run some with `dvc exp run`, or "
                        "pull them with `dvc exp pull origin`")
    names = [e.name for e in found]
    if a.baseline and a.baseline not in names:
        raise DataError(f"--baseline {a.baseline}: not among the compared experiments ({', '.join(names)})")
    base = found[names.index(a.baseline)] if a.baseline else found[0]
    blocks, rows = build(found, skipped, base, a.out / "figures")
    with files.atomic_path(a.out / "results.csv") as tmp:
        rows.to_csv(tmp, index=False)
    files.write_text(a.out / "summary.md", render.markdown(blocks, a.out))
    files.write_text(a.out / "index.html", render.page(blocks, "mnist-bench: experiments compared"))
    log.info("compared %d experiments (%d skipped): %s", len(found), len(skipped), a.out / "summary.md")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    files.run(main)
