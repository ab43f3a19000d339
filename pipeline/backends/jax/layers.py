"""The canonical layers (spec.py) as one flax.linen module; its parameters in spec order.

The canonical layouts are flax's own (NHWC images, HWIO conv kernels, (in, out) dense kernels, a row-major flatten
of (h, w, c)), so weights go in and out unchanged: only their names and nesting are flax's.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from pipeline.spec import Act, Conv, Dense, Dropout, Flatten, ModelSpec, Pool

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}


def layer_name(i: int, layer: object) -> str:
    """A layer's parameter scope: its place in the spec and kind (l00_conv, l04_dense). JAX orders a dict's
    entries by key (device_put returns them sorted), so the tree's order is the spec's up to 100 layers."""
    return f"l{i:02d}_{type(layer).__name__.lower()}"


class Net(nn.Module):
    """The spec's layers in order. `dtype` is the compute dtype (bf16 / fp16: mixed precision, each conv and dense
    layer casting its input and weights to it); the parameters stay float32."""
    layers: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Any, train: bool = False, keep: tuple | None = None) -> Any:
        """Logits in `dtype`. `keep`: the run's shared dropout masks, one per Dropout layer (base.Step), in place of
        flax's own draws from the "dropout" RNG stream."""
        masks = iter(keep or ())
        for i, layer in enumerate(self.layers):
            match layer:
                case Conv(k, _, c_out):  # 'same' padding, stride 1, as every framework's
                    x = nn.Conv(c_out, (k, k), padding="SAME", dtype=self.dtype, param_dtype=jnp.float32,
                                name=layer_name(i, layer))(x)
                case Pool(size):
                    x = nn.max_pool(x, (size, size), strides=(size, size))
                case Flatten():
                    x = x.reshape(x.shape[0], -1)  # NHWC row-major: (h, w, c) order, the canonical one
                case Dense(_, n_out):
                    x = nn.Dense(n_out, dtype=self.dtype, param_dtype=jnp.float32, name=layer_name(i, layer))(x)
                case Act(fn):
                    x = ACTIVATIONS[fn](x)
                case Dropout(p) if keep is not None:  # as the other backends: x * (mask * 1/(1-p))
                    x = x * (next(masks).astype(x.dtype) * (1.0 / (1.0 - p)))
                case Dropout(p):
                    x = nn.Dropout(p, deterministic=not train)(x)
                case _:
                    raise TypeError(f"unknown layer {layer!r}")
        return x


def to_params(spec: ModelSpec, weights: list[Any]) -> dict:
    """Canonical weights (kernel then bias per conv or dense layer, in order) as flax's parameter tree."""
    it, params = iter(weights), {}
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, (Conv, Dense)):
            params[layer_name(i, layer)] = {"kernel": next(it), "bias": next(it)}
    return params


def from_params(spec: ModelSpec, params: dict) -> list[np.ndarray]:
    """flax's parameter tree as canonical weights: copies, in spec order (the tree's own order is its keys')."""
    return [np.array(params[layer_name(i, layer)][part], np.float32)
            for i, layer in enumerate(spec.layers) if isinstance(layer, (Conv, Dense)) for part in ("kernel", "bias")]
