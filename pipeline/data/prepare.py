"""The prepared split: IDX files checked together, stratified validation, one .npz + metadata.

The prepared split: the four IDX files checked against each other, a stratified validation split with
normalisation stats from the training part only, written to and read from one .npz with its metadata.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.data.datasets import FILES
from pipeline.data.idx import read_idx
from pipeline.errors import DataError
from pipeline.files import atomic_path

log = logging.getLogger("prepare")
IMBALANCE = 10.0  # largest / smallest class size above which prepare warns


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
    check_classes(y_tr, y_te, len(classes), paths[1], paths[3])
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, classes


def _few(values: list[int]) -> str:
    return ", ".join(map(str, values[:10])) + (f" and {len(values) - 10} more" if len(values) > 10 else "")


def check_classes(y_train: np.ndarray, y_test: np.ndarray, k: int, train_path: Path, test_path: Path) -> None:
    """Refuse labels that cannot be trained or evaluated fairly: fewer than two classes, labels that are not
    0..K-1 (a class never seen in training: 0/100/200 would build a 201-way classifier), a training class with no
    test image (it could not be evaluated)."""
    present = sorted(int(c) for c in np.unique(y_train))
    if len(present) < 2:
        raise DataError(f"{train_path}: {len(present)} class in the training labels ({_few(present)}); a classifier "
                        "needs at least two")
    for p, y in ((train_path, y_train), (test_path, y_test)):
        if len(y) and int(y.max()) >= k:
            raise DataError(f"{p}: label {int(y.max())} outside the class range 0..{k - 1}")
    missing = sorted(set(range(k)) - set(present))
    if missing:
        raise DataError(f"{train_path}: labels are not 0..{k - 1}: no training image of class {_few(missing)} "
                        f"(labels found: {_few(present)}); relabel them 0..K-1")
    untested = sorted(set(present) - {int(c) for c in np.unique(y_test)})
    if untested:
        raise DataError(f"{test_path}: no test image of class {_few(untested)}, which the training set has; those "
                        "classes could not be evaluated")


def class_counts(y: np.ndarray, k: int, path: Path, imbalance: float = IMBALANCE) -> list[int]:
    """Training images per class; a warning (not a refusal) when the largest class outnumbers the smallest by more
    than `imbalance` times: accuracy then says little about the small classes (see the per-class table)."""
    counts = np.bincount(y, minlength=k).tolist()
    if max(counts) > imbalance * min(counts):
        log.warning("%s: classes are strongly imbalanced (%d to %d images per class; per class: %s); the report's "
                    "per-class table shows what that costs", path, min(counts), max(counts), counts)
    return counts


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
    held_out = set(np.unique(a["y_train"][va]).tolist())
    short = [c for c in range(len(classes)) if c not in held_out]
    if short:
        n = int(np.sum(a["y_train"] == short[0]))
        raise DataError(f"{raw / FILES[1]}: class {short[0]} has {n} training images, too few to hold one out for "
                        f"validation at data.val_fraction {val_fraction:g}" + (
                            f" (so have classes {_few(short[1:])})" if len(short) > 1 else "")
                        + "; raise data.val_fraction or add images of it")
    x_tr = a["x_train"][tr]
    # pixels are 0-255: the exact moments from 256 counts, not from a float64 copy of every pixel (340 MB for MNIST)
    counts, levels = np.bincount(x_tr.ravel(), minlength=256), np.arange(256) / 255.0
    mean = counts @ levels / counts.sum()
    std = np.sqrt(counts @ (levels - mean) ** 2 / counts.sum())
    return {
        "x_train": x_tr, "y_train": a["y_train"][tr].astype(np.int64),
        "x_val": a["x_train"][va], "y_val": a["y_train"][va].astype(np.int64),
        "x_test": a["x_test"], "y_test": a["y_test"].astype(np.int64),
        "val_index": va,  # positions in the original training file, for traceability
        "mean": np.float32(mean), "std": np.float32(std),
        "classes": np.array(classes),
        "class_counts": np.array(class_counts(a["y_train"][tr], len(classes), raw / FILES[1]), np.int64),
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
    out = x.astype(np.float32)  # in place from here: the same float32 roundings as the plain expression, without
    out /= 255.0                # its three full-size temporaries (0.3-1 s for 54,000 images on a 2-core CPU,
    out -= mean                 # paid by every bench child and train cell)
    out /= std
    return out[..., None]
