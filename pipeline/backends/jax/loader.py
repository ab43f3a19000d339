"""A JAX user's input path: per-sample NumPy work on threads, batches prefetched to the device.

JAX has no data loader of its own; its examples (flax's prefetch_to_device) prepare batches in NumPy and keep a
few already handed to jax.device_put, whose copy runs while the step before computes. The per-sample work is the
other loaders': uint8 -> float, normalise, a random shift of up to `shift` pixels each way.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import jax
import numpy as np

from pipeline.backends.base import Feed


def plan(feed: Feed) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (sample indices, (dy, dx) shifts) per batch: shuffled with feed.seed each epoch, full batches only,
    drawn here so the batches are the same whatever the workers."""
    rng = np.random.default_rng(feed.seed)
    n, bs = len(feed.labels), feed.batch_size
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - bs + 1, bs):
            yield perm[i:i + bs], rng.integers(0, 2 * feed.shift + 1, (bs, 2))


def batch(feed: Feed, idx: np.ndarray, moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One batch on the host: (batch, H, W, 1) float32 images, normalised and shifted, and int32 labels (JAX's
    integers are 32 bits unless x64 is on)."""
    h, w, s = feed.images.shape[1], feed.images.shape[2], feed.shift
    scale, offset = np.float32(1 / (255.0 * feed.std)), np.float32(feed.mean / feed.std)

    def one(i: int, dy: int, dx: int) -> np.ndarray:  # (x / 255 - mean) / std, in one multiply-add
        x = feed.images[i].astype(np.float32) * scale - offset
        return (np.pad(x, s)[dy:dy + h, dx:dx + w] if s else x)[..., None]
    return np.stack([one(i, dy, dx) for i, (dy, dx) in zip(idx, moves)]), feed.labels[idx].astype(np.int32)


def host_batches(feed: Feed, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless host batches: made inline with 0 workers, else by a pool of `workers` threads keeping `prefetch`
    batches per worker in progress. Threads: NumPy releases the GIL only inside its larger kernels, as in the numpy
    backend's loader."""
    todo = plan(feed)
    if not workers:
        for idx, moves in todo:
            yield batch(feed, idx, moves)
    with ThreadPoolExecutor(workers) as pool:
        ahead: collections.deque = collections.deque()
        while True:
            while len(ahead) < max(1, feed.prefetch) * workers:
                ahead.append(pool.submit(batch, feed, *next(todo)))
            yield ahead.popleft().result()


def device_batches(feed: Feed, workers: int, device: Any) -> Iterator[tuple[Any, Any]]:
    """Endless device batches: each host batch handed to jax.device_put, `prefetch` of them ahead (the copies run
    in the background) where there are workers; with 0 workers nothing runs ahead, as torch's num_workers=0."""
    ahead: collections.deque = collections.deque()
    depth = max(1, feed.prefetch) if workers else 0
    for xb, yb in host_batches(feed, workers):
        ahead.append((jax.device_put(xb, device), jax.device_put(yb, device)))
        if len(ahead) > depth:
            yield ahead.popleft()
