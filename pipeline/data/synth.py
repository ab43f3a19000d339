"""MNIST-shaped 28x28 data offline, made from scikit-learn's real 8x8 digits.

MNIST-shaped data offline: scikit-learn's real 8x8 handwritten digits, upscaled to 20x20 inside a 28x28 canvas
(as MNIST centres its 20x20 digits), randomly shifted and lightly noised, written as the four IDX files.

It lets anyone time the default pipeline on 28x28 images without the network:
    python -m pipeline.data.synth --out data/mnist28       # 60,000 + 10,000 images, about 20 s
    dvc exp run -S data.name=idx -S 'data.mirrors=[data/mnist28]'
Not MNIST: accuracies on it say nothing about MNIST's; its shapes and sizes make the timings MNIST's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.data.datasets import FILES
from pipeline.data.idx import write_idx
from pipeline.files import atomic_path


def images(n: int, seed: int, shift: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images and labels drawn from the digits with replacement, each shifted by up to `shift`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    base = ndimage.zoom(d.images / 16.0, (1, 2.5, 2.5), order=1).clip(0, 1)  # (1797, 20, 20)
    pick = rng.integers(0, len(base), n)
    canvas = np.zeros((n, 28 + 2 * shift, 28 + 2 * shift), np.float32)
    canvas[:, 4 + shift:24 + shift, 4 + shift:24 + shift] = base[pick]
    dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
    rows = (np.arange(28)[None, :] + dy[:, None])[:, :, None]
    cols = (np.arange(28)[None, :] + dx[:, None])[:, None, :]
    out = canvas[np.arange(n)[:, None, None], rows, cols]
    out = (out + rng.normal(0, 0.03, out.shape)).clip(0, 1)
    return (out * 255).round().astype(np.uint8), d.target[pick].astype(np.uint8)


def write(out: Path, n_train: int, n_test: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = images(n_train, seed), images(n_test, seed + 1)
    for name, arr in zip(FILES, (xtr, ytr, xte, yte)):
        with atomic_path(out / name) as tmp:
            write_idx(tmp, arr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for the four .gz IDX files")
    ap.add_argument("--train", type=int, default=60000, help="training images (MNIST has 60,000)")
    ap.add_argument("--test", type=int, default=10000, help="test images (MNIST has 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    write(a.out, a.train, a.test, a.seed)
    print(f"wrote {a.train} + {a.test} 28x28 images to {a.out}")


if __name__ == "__main__":
    main()
