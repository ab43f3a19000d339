"""Stage `prepare`: IDX files -> one .npz (split, normalisation stats, metadata)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import files, params
from pipeline.data.datasets import DATASETS
from pipeline.data.prepare import prepare, write_prepared

log = logging.getLogger("prepare")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", type=Path, required=True, help="directory holding the four IDX .gz files")
    ap.add_argument("--out", type=Path, required=True, help="the .npz to write")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = params.load(args.params)
    arrays = prepare(args.raw, DATASETS[p.data.name].classes, p.data.val_fraction, p.seed)
    meta = write_prepared(args.out, arrays, p.data.name)
    log.info("%s: %s, mean %.4f std %.4f -> %s", p.data.name, meta["sizes"], arrays["mean"], arrays["std"],
             args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
