"""Stage `prepare`: IDX files -> one npz (uint8 images, labels, stratified validation split, mean/std)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from pipeline import files, params
from pipeline.data import DATASETS, prepare

log = logging.getLogger("prepare")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", type=Path, required=True, help="directory holding the four IDX .gz files")
    ap.add_argument("--out", type=Path, required=True, help="the .npz to write")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = params.load(args.params)
    arrays = prepare(args.raw, DATASETS[p.data.name].classes, p.data.val_fraction, p.seed)
    meta = {"dataset": p.data.name, "image_shape": list(arrays["x_train"].shape[1:]) + [1],
            "sizes": {s: int(len(arrays[f"y_{s}"])) for s in ("train", "val", "test")}}
    with files.atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    log.info("%s: %s, mean %.4f std %.4f -> %s", p.data.name, meta["sizes"], arrays["mean"], arrays["std"],
             args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
