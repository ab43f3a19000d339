"""The canonical layers (spec.py) as torch modules, and their weights in PyTorch's layouts.

Canonical weights to PyTorch's and back: conv kernels OIHW, dense kernels (out, in), and the row order a dense
layer sees after torch's (c, h, w) flatten.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from pipeline.spec import Act, Conv, Dense, Dropout, Flatten, ModelSpec, Pool


def _flatten_perm(spec: ModelSpec, i: int) -> np.ndarray | None:
    """Row order of a dense kernel after a flatten: canonical flattens (h, w, c), torch flattens (c, h, w)."""
    prev = spec.layers[i - 1] if i else None
    if not isinstance(prev, Flatten):
        return None
    return np.arange(prev.h * prev.w * prev.c).reshape(prev.h, prev.w, prev.c).transpose(2, 0, 1).ravel()


def to_native(spec: ModelSpec, weights: list[np.ndarray]) -> list[np.ndarray]:
    """Canonical weights -> torch layouts (conv OIHW, dense (out, in) in torch's flatten order)."""
    out, it = [], iter(weights)
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Conv):
            out += [next(it).transpose(3, 2, 0, 1), next(it)]
        elif isinstance(layer, Dense):
            kernel, perm = next(it), _flatten_perm(spec, i)
            out += [(kernel if perm is None else kernel[perm]).T, next(it)]
    return [np.ascontiguousarray(a) for a in out]


def from_native(spec: ModelSpec, native: list[np.ndarray]) -> list[np.ndarray]:
    out, it = [], iter(native)
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Conv):
            out += [next(it).transpose(2, 3, 1, 0), next(it)]
        elif isinstance(layer, Dense):
            kernel, perm = next(it).T, _flatten_perm(spec, i)
            if perm is not None:
                kernel = kernel[np.argsort(perm)]
            out += [kernel, next(it)]
    return [np.ascontiguousarray(a) for a in out]


def torch_module(layer: object) -> nn.Module:
    """One canonical layer as a torch module: 'same' convolutions (odd kernels), NCHW."""
    match layer:
        case Conv(k, c_in, c_out):
            return nn.Conv2d(c_in, c_out, k, padding=k // 2)
        case Pool(size):
            return nn.MaxPool2d(size)
        case Flatten():
            return nn.Flatten()
        case Dense(n_in, n_out):
            return nn.Linear(n_in, n_out)
        case Dropout(p):
            return nn.Dropout(p)
        case Act(fn):
            return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[fn]()
    raise TypeError(f"unknown layer {layer!r}")
