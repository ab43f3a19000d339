"""Datasets: the registry (mnist, fashion-mnist, idx, digits), IDX file io, and prepare (split + normalise)."""
from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.files import atomic_path

# The four IDX files every dataset is stored as, in the order prepare reads them.
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class Dataset:
    md5: tuple[str, str, str, str] | None  # per file in FILES order; None = no known checksums (idx)
    mirrors: tuple[str, ...]               # built-in mirrors, tried in order
    classes: tuple[str, ...] | None        # class names; None = inferred from the labels (idx)


DIGITS = tuple(str(d) for d in range(10))
DATASETS = {
    "mnist": Dataset(
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",     # torchvision's mirror
         "https://storage.googleapis.com/cvdf-datasets/mnist/"),  # tensorflow-datasets' mirror
        DIGITS),
    "fashion-mnist": Dataset(
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # torchvision's mirror
         "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),  # Keras' mirror
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot")),
    "idx": Dataset(None, (), None),
    "digits": Dataset(None, (), DIGITS),
}
DIGITS_TEST_FRACTION = 0.25  # scikit-learn's digits has no official test split; this one is stratified, seed 0

_DTYPES = {0x08: np.uint8}  # IDX type codes this project reads (MNIST-family files are all unsigned bytes)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not), validating magic number, dimensions and length."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run `dvc repro download` first") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad magic number {raw[:4].hex() or 'empty'} (an IDX file starts 0000 08 0N)")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: IDX element type 0x{code:02x} unsupported (expected 0x08, unsigned byte)")
    if not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: bad IDX header ({ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes of data, "
                        f"file has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def validate_idx(path: Path) -> None:
    """Header/length check for files with no known checksum (the `idx` dataset)."""
    read_idx(path)


def write_digits(dest: Path) -> None:
    """scikit-learn's embedded 8x8 digits (real handwriting, no network) as the four IDX files."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255 like MNIST
    tr, te = train_test_split(np.arange(len(images)), test_size=DIGITS_TEST_FRACTION, stratify=d.target,
                              random_state=0)
    dest.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(FILES, (images[tr], d.target[tr], images[te], d.target[te])):
        with atomic_path(dest / name) as tmp:
            write_idx(tmp, arr)


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


def load_prepared(path: Path) -> dict[str, np.ndarray]:
    if not Path(path).exists():
        raise DataError(f"{path}: missing; run `dvc repro prepare` first")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def prepared_meta(prepared: dict[str, np.ndarray]) -> dict:
    """The prepare stage's metadata: dataset name, image shape (H, W, C), split sizes."""
    return json.loads(str(prepared["meta"]))


def normalise(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (N, H, W) -> float32 NHWC, scaled to [0, 1] then standardised with the training stats."""
    return ((x.astype(np.float32) / 255.0 - mean) / std)[..., None]
