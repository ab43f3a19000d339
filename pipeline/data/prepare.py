"""The prepared split: IDX files checked together, stratified validation, one .npz + metadata.

The prepared split: the four IDX files checked against each other, a stratified validation split with
normalisation stats from the training part only, written to and read from one .npz with its metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.data.datasets import FILES
from pipeline.data.idx import read_idx
from pipeline.errors import DataError
from pipeline.files import atomic_path


def load_raw(raw: Path, classes: tuple[str, ...] | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Read the four IDX files and check they fit together; return arrays and class names."""
    paths = [raw / f for f in FILES]
    x_tr, y_tr, x_te, y_te = (read_idx(p) for p in paths)
    for p, x in ((paths[0], x_tr), (paths[2], x_te)):
        if x.ndim != 3:
            raise DataError(f"{p}: expected images (N x H x W), got {x.ndim} dimensions")
    for p, y in ((paths[1], y_tr), (paths[3], y_te)):
        if y.ndim != 1:
            raise DataError(f"{p}: expected labels (N), got {y.ndim} dimensions")
    for (pi, x), (pl, y) in (((paths[0], x_tr), (paths[1], y_tr)), ((paths[2], x_te), (paths[3], y_te))):
        if len(x) != len(y):
            raise DataError(f"{pl}: {len(y)} labels for {len(x)} images in {pi.name}")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{paths[2]}: images are {x_te.shape[1:]}, training images are {x_tr.shape[1:]}")
    if classes is None:
        classes = tuple(str(c) for c in range(int(y_tr.max()) + 1))
    for p, y in ((paths[1], y_tr), (paths[3], y_te)):
        if len(y) and int(y.max()) >= len(classes):
            raise DataError(f"{p}: label {int(y.max())} outside the class range 0..{len(classes) - 1}")
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, classes


def prepare(raw: Path, classes: tuple[str, ...] | None, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Split a stratified validation set off the training set; normalisation stats from the rest only."""
    from sklearn.model_selection import train_test_split

    a, classes = load_raw(raw, classes)
    idx = np.arange(len(a["y_train"]))
    try:
        tr, va = train_test_split(idx, test_size=val_fraction, stratify=a["y_train"], random_state=seed)
    except ValueError as e:  # e.g. a class with a single sample cannot be stratified
        raise DataError(f"{raw / FILES[1]}: cannot split off a stratified validation set ({e})") from None
    tr, va = np.sort(tr), np.sort(va)
    scaled = a["x_train"][tr].astype(np.float64) / 255.0
    return {
        "x_train": a["x_train"][tr], "y_train": a["y_train"][tr].astype(np.int64),
        "x_val": a["x_train"][va], "y_val": a["y_train"][va].astype(np.int64),
        "x_test": a["x_test"], "y_test": a["y_test"].astype(np.int64),
        "val_index": va,  # positions in the original training file, for traceability
        "mean": np.float32(scaled.mean()), "std": np.float32(scaled.std()),
        "classes": np.array(classes),
    }


def write_prepared(path: Path, arrays: dict[str, np.ndarray], dataset: str) -> dict:
    """The prepared arrays and their metadata (dataset name, image shape (H, W, C), split sizes) as one .npz;
    returns the metadata."""
    meta = {"dataset": dataset, "image_shape": list(arrays["x_train"].shape[1:]) + [1],
            "sizes": {s: int(len(arrays[f"y_{s}"])) for s in ("train", "val", "test")}}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return meta


def load_prepared(path: Path) -> dict[str, np.ndarray]:
    if not Path(path).exists():
        raise DataError(f"{path}: missing; run `dvc repro prepare` first")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def prepared_meta(prepared: dict[str, np.ndarray]) -> dict:
    """The metadata write_prepared stored: dataset name, image shape (H, W, C), split sizes."""
    return json.loads(str(prepared["meta"]))


def normalise(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (N, H, W) -> float32 NHWC, scaled to [0, 1] then standardised with the training stats."""
    return ((x.astype(np.float32) / 255.0 - mean) / std)[..., None]
