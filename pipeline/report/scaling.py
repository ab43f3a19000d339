"""The report's scaling section: table, verdicts per worker count, figure, time to target."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backends import about, shown
from pipeline.report import figures, render
from pipeline.records import Cell
from pipeline.report.results import Results

HOW = ("Not measured in this run: scaling is opt-in (`dvc exp run -S 'scale.workers=[1,2]'`, about 5 minutes on "
       "2 CPU cores; README \"Scaling\").")


def _steps(r: Results, fw: str, model: str) -> float | None:
    """Median steps to target over the train stage's seeds that reached it (same global batch, same maths)."""
    seeds = r.seeds.get(Cell(fw, model))
    got = seeds["steps_to_target"].dropna() if seeds is not None else []
    return float(np.median(got)) if len(got) else None


def _num(x: float | None) -> float | None:
    """A figure, or None when there is none (JSON null, NaN: too few usable rounds)."""
    return None if x is None or x != x else float(x)


def _eff(t: dict) -> str:
    e, lo, hi = _num(t["efficiency"]), _num(t["efficiency_ci_low"]), _num(t["efficiency_ci_high"])
    if e is None:
        return "—"
    return f"{e:.2f} [{lo:.2f}–{hi:.2f}]" if lo is not None else f"{e:.2f} (too few rounds for an interval)"


def table(r: Results) -> pd.DataFrame:
    s = r.scale
    rows = []
    for t in s["table"]:
        rate = _num(t["samples_per_s"])
        if rate is None:
            continue  # every launch of it flagged: said by the flagged count above the table
        steps = _steps(r, t["framework"], t["model"])
        one = next((_num(u["samples_per_s"]) for u in s["table"] if (u["framework"], u["model"], u["workers"]) ==
                    (t["framework"], t["model"], 1)), None)
        rows.append({"framework": shown(t["framework"]), "model": t["model"], "workers": t["workers"],
                     "samples/s median [IQR]": f"{rate:,.0f} [{t['samples_per_s_q1']:,.0f}–"
                                               f"{t['samples_per_s_q3']:,.0f}]",
                     "speed-up vs 1": f"{rate / one:.2f}x" if one else "—", "efficiency [95% CI]": _eff(t),
                     "all-reduce share": f"{100 * t['comm_share']:.0f}%",
                     "time to target s (est.)": f"{steps * s['global_batch'] / rate:.1f}" if steps else "not reached",
                     "rounds": t["rounds"]})
    return pd.DataFrame(rows)


def blocks(r: Results, figdir: Path) -> list[render.Block]:
    s = r.scale
    B: list[render.Block] = [("h2", "Data-parallel scaling")]
    if r.lacks("scale"):
        return B + [("p", f"Not measured: {r.lacks('scale')}.")]
    if not s.get("measured"):
        return B + [("p", HOW)]
    rows = s["rows"]
    comm = [f"{shown(fw)} {c}" for fw, c in dict.fromkeys((x["framework"], x["comm"]) for x in rows)]
    devices = sorted({x["device"] for x in rows})
    engines = "; ".join(f"{about(fw).label}: {about(fw).engine}" for fw in dict.fromkeys(x["framework"] for x in rows))
    B += [("p", f"Each framework's own engine ({engines}). Same global batch "
                f"({s['global_batch']}) at every worker count, split into equal shards; same initial weights and "
                f"batch order, so N workers do one worker's maths (tests/test_scale.py). Device: "
                f"{', '.join(devices)}; communication: {', '.join(comm)} between processes on {s['host']} "
                f"({'loopback TCP on one machine' if s['host'] in ('localhost', '127.0.0.1') else 'TCP'}). "
                f"{s['rounds']} rounds of fresh launches, calibrated by the {s['speedometer']}; {s['flagged']} "
                "launch(es) flagged for drift and left out of the medians (a round's two launches still pair when "
                "they met the same machine speed)."),
          render.table_or(table(r), "No scaling table: every launch was flagged for drift, so no median is left.")]
    if "cpu" in devices:
        B.append(("p", f"On a CPU the workers share the machine's {s['threads']} threads (each gets threads / N), "
                       "so N workers cannot compute faster than one: the best speed-up is 1x, an efficiency of "
                       "1/N, and whatever they spend on the all-reduce comes on top. A drop in efficiency here is "
                       "the expected result; data parallelism pays off with a device (or machine) per worker."))
    B.append(("p", "Efficiency: rate(N) / (N x rate(1)), paired within each round. All-reduce share: one step's "
                   "gradients all-reduced alone, over the step time (an upper bound: DDP overlaps it with the "
                   "backward pass). Time to target (est.): the train stage's steps to target x the step time at N."))
    B += [("p", f"**{v.model}, {v.workers} worker{'s' * (v.workers > 1)}**: {v.text}"
                + (f" ({shown(v.a)} vs {shown(v.b)})" if len({x.a for x in r.scale_verdicts}) > 1 else ""))
          for v in r.scale_verdicts]
    drawn = pd.DataFrame([t for t in s["table"] if _num(t["samples_per_s"]) is not None])
    if drawn.empty:
        return B + [("p", "No scaling figure: every launch was flagged for drift; rerun the stage when the machine is "
                          "calmer (`dvc repro -f -s scale`).")]
    numbers = ["samples_per_s", "samples_per_s_q1", "samples_per_s_q3", "efficiency"]
    drawn[numbers] = drawn[numbers].astype(float)  # JSON null (too few rounds for a figure) as NaN: not drawn
    B.append(("img", figures.scaling(drawn.assign(framework=lambda d: d["framework"].map(shown)), figdir / "scaling.png",
                                     shared="cpu" in devices),
              "Training samples/s and efficiency against worker processes"))
    return B
