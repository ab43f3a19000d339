"""Framework-neutral model spec: the layer list both backends build, its counts, and initial weights in NumPy.

Canonical layouts (the ones every weight list in this project uses): images NHWC float32; conv kernels
(kh, kw, c_in, c_out); dense kernels (in, out); `flatten` emits features in (h, w, c) order. The PyTorch
backend converts to its NCHW / (out, in) layouts when loading and back when reading.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pipeline.params import ParamsError, Params

# Image shape (H, W, C) of the datasets whose shape is known before download; `idx` is known after prepare.
DATA_SHAPES = {"mnist": (28, 28, 1), "fashion-mnist": (28, 28, 1), "digits": (8, 8, 1)}

# A layer is a tuple: ("conv", c_in, c_out, k) · ("pool", 2) · ("flatten", h, w, c) · ("dense", n_in, n_out)
# · ("relu",) · ("tanh",) · ("sigmoid",) · ("dropout", p)
Layer = tuple
ACTIVATIONS = ("relu", "tanh", "sigmoid")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_shape: tuple[int, int, int]  # H, W, C
    classes: int
    layers: tuple[Layer, ...]

    def param_layers(self) -> list[Layer]:
        return [l for l in self.layers if l[0] in ("conv", "dense")]

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Canonical shapes of the weight list: kernel then bias for every conv/dense layer."""
        shapes: list[tuple[int, ...]] = []
        for l in self.param_layers():
            shapes += [(l[3], l[3], l[1], l[2]), (l[2],)] if l[0] == "conv" else [(l[1], l[2]), (l[2],)]
        return shapes

    def param_count(self) -> int:
        return int(sum(np.prod(s) for s in self.param_shapes()))

    def layer_param_counts(self) -> list[int]:
        s = self.param_shapes()
        return [int(np.prod(s[i]) + np.prod(s[i + 1])) for i in range(0, len(s), 2)]

    def flops_per_sample(self) -> int:
        """Forward FLOPs per sample, counting a multiply-add as 2 (conv and dense layers only)."""
        h, w, _ = self.in_shape
        total = 0
        for l in self.layers:
            if l[0] == "conv":
                total += 2 * l[3] * l[3] * l[1] * l[2] * h * w
            elif l[0] == "pool":
                h, w = h // l[1], w // l[1]
            elif l[0] == "dense":
                total += 2 * l[1] * l[2]
        return total


def mlp(in_shape: tuple[int, int, int], classes: int, hidden: list[int], activation: str,
        dropout: float) -> ModelSpec:
    h, w, c = in_shape
    layers: list[Layer] = [("flatten", h, w, c)]
    n = h * w * c
    for width in hidden:
        layers += [("dense", n, width), (activation,)] + ([("dropout", dropout)] if dropout > 0 else [])
        n = width
    layers.append(("dense", n, classes))
    return ModelSpec("mlp", in_shape, classes, tuple(layers))


def cnn(in_shape: tuple[int, int, int], classes: int, channels: list[int], kernel: int, dense: int,
        dropout: float) -> ModelSpec:
    h, w, c = in_shape
    layers: list[Layer] = []
    for i, out in enumerate(channels):
        if h < 2 or w < 2:
            raise ParamsError(f"params.yaml: cnn.channels: {len(channels)} conv blocks need {len(channels)} 2x2 "
                              f"poolings, but a {in_shape[0]}x{in_shape[1]} image allows only {i}")
        layers += [("conv", c, out, kernel), ("relu",), ("pool", 2)]
        h, w, c = h // 2, w // 2, out
    layers += [("flatten", h, w, c), ("dense", h * w * c, dense), ("relu",)]
    layers += [("dropout", dropout)] if dropout > 0 else []
    layers.append(("dense", dense, classes))
    return ModelSpec("cnn", in_shape, classes, tuple(layers))


def from_params(p: Params, model: str, in_shape: tuple[int, int, int], classes: int = 10) -> ModelSpec:
    """The spec of `model` for images of `in_shape` (H, W, C); a spec that cannot work is a ParamsError."""
    if model == "mlp":
        return mlp(in_shape, classes, p.mlp.hidden, p.mlp.activation, p.mlp.dropout)
    return cnn(in_shape, classes, p.cnn.channels, p.cnn.kernel, p.cnn.dense, p.cnn.dropout)


def init_weights(spec: ModelSpec, seed: int) -> list[np.ndarray]:
    """Initial weights in canonical layout, drawn once in NumPy so both frameworks start identical.

    He-uniform for layers followed by ReLU, Glorot-uniform otherwise (tanh, sigmoid, the class layer);
    zero biases.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    weights: list[np.ndarray] = []
    for i, l in enumerate(spec.layers):
        if l[0] not in ("conv", "dense"):
            continue
        if l[0] == "conv":
            fan_in, fan_out, shape = l[1] * l[3] ** 2, l[2] * l[3] ** 2, (l[3], l[3], l[1], l[2])
        else:
            fan_in, fan_out, shape = l[1], l[2], (l[1], l[2])
        relu_next = i + 1 < len(spec.layers) and spec.layers[i + 1][0] == "relu"
        limit = np.sqrt(6.0 / fan_in) if relu_next else np.sqrt(6.0 / (fan_in + fan_out))
        weights += [rng.uniform(-limit, limit, shape).astype(np.float32), np.zeros(shape[-1], np.float32)]
    return weights


def batch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: the same NumPy permutation for both frameworks."""
    return np.random.default_rng([seed, epoch, 0xBA7C]).permutation(n)


def digest(arrays: list[np.ndarray]) -> str:
    """Short SHA-256 of arrays' bytes: evidence that two cells started from the same weights or order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Optim:
    """Optimizer maths, every hyperparameter explicit (framework defaults differ, e.g. Adam's epsilon).

    sgd: w -= lr*g. momentum (heavy ball): b = momentum*b + g; w -= lr*b. adam (Kingma & Ba, Algorithm 1):
    m, v moving averages; w -= lr * m_hat / (sqrt(v_hat) + eps), eps added after bias correction.
    """
    name: str
    lr: float
    momentum: float
    beta1: float
    beta2: float
    eps: float

    @classmethod
    def from_params(cls, p: Params, model: str) -> "Optim":
        t = p.train
        return cls(t.optimizer, getattr(p.schedule, model).lr, t.momentum, t.beta1, t.beta2, t.eps)
