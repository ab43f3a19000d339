"""Stage `report`: every result file -> results.csv, summary.md, figures, index.html."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import files, params
from pipeline.backends import shown
from pipeline.data.prepare import load_prepared
from pipeline.report import headline, render, results, sections

log = logging.getLogger("report")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, required=True, help="reports/ directory the stages wrote into")
    ap.add_argument("--data", type=Path, required=True, help="prepared .npz (test images for the sample grid)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    r = results.collect(a.results, p.frameworks, p.models)
    prepared = load_prepared(a.data)
    blocks = sections.build(r, a.params.read_text(), prepared, a.results / "figures")
    with files.atomic_path(a.results / "results.csv") as tmp:
        results.tidy(r).to_csv(tmp, index=False)
    files.write_text(a.results / "summary.md", render.markdown(blocks, a.results))
    files.write_text(a.results / "index.html", render.page(blocks, "mnist-bench report"))
    files.write_json(a.results / "headline.json", headline.metrics(r))
    curves = results.history_rows(r)[["model", "framework", "step", "train_s", "val_acc"]]
    with files.atomic_path(a.results / "plots" / "val_acc.tsv") as tmp:  # every cell in one file: `dvc plots`
        curves.assign(framework=curves["framework"].map(shown)).to_csv(tmp, sep="\t", index=False)
    log.info("wrote %s", ", ".join(str(a.results / n) for n in ("summary.md", "index.html", "results.csv", "headline.json")))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # categorical-axis notices are expected here
    files.run(main)
