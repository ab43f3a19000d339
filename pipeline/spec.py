"""Framework-neutral networks (layer lists), initial weights, batch order, optimizer maths.

Framework-neutral model spec: the layer list both backends build, its counts, and initial weights in NumPy.

Canonical layouts (the ones every weight list in this project uses): images NHWC float32; conv kernels
(kh, kw, c_in, c_out); dense kernels (in, out); `Flatten` emits features in (h, w, c) order. The PyTorch
backend converts to its NCHW / (out, in) layouts when loading and back when reading.

This module knows nothing of params.yaml: `params.model_spec` translates params into the plain arguments here.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np

MODELS = ("mlp", "cnn")  # the one list of networks; each has a builder below
ACTIVATIONS = ("relu", "tanh", "sigmoid")


class Conv(NamedTuple):
    """k x k convolution, 'same' padding, stride 1."""
    k: int
    c_in: int
    c_out: int


class Pool(NamedTuple):
    """size x size max-pool, stride = size."""
    size: int


class Flatten(NamedTuple):
    """(h, w, c) feature map -> h*w*c features, in (h, w, c) order."""
    h: int
    w: int
    c: int


class Dense(NamedTuple):
    n_in: int
    n_out: int


class Act(NamedTuple):
    fn: str  # one of ACTIVATIONS


class Dropout(NamedTuple):
    p: float  # drop probability, inverted dropout (survivors scaled by 1/(1-p))


Layer = Union[Conv, Pool, Flatten, Dense, Act, Dropout]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_shape: tuple[int, int, int]  # H, W, C
    classes: int
    layers: tuple[Layer, ...]

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Canonical shapes of the weight list: kernel then bias for every conv/dense layer."""
        shapes: list[tuple[int, ...]] = []
        for layer in self.layers:
            if isinstance(layer, Conv):
                shapes += [(layer.k, layer.k, layer.c_in, layer.c_out), (layer.c_out,)]
            elif isinstance(layer, Dense):
                shapes += [(layer.n_in, layer.n_out), (layer.n_out,)]
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
        for layer in self.layers:
            if isinstance(layer, Conv):
                total += 2 * layer.k * layer.k * layer.c_in * layer.c_out * h * w
            elif isinstance(layer, Pool):
                h, w = h // layer.size, w // layer.size
            elif isinstance(layer, Dense):
                total += 2 * layer.n_in * layer.n_out
        return total


def mlp(in_shape: tuple[int, int, int], classes: int, hidden: list[int], activation: str,
        dropout: float) -> ModelSpec:
    """Flatten, [dense, activation, dropout] per hidden width, dense to the classes."""
    h, w, c = in_shape
    layers: list[Layer] = [Flatten(h, w, c)]
    n = h * w * c
    for width in hidden:
        layers += [Dense(n, width), Act(activation)] + ([Dropout(dropout)] if dropout > 0 else [])
        n = width
    layers.append(Dense(n, classes))
    return ModelSpec("mlp", in_shape, classes, tuple(layers))


def cnn(in_shape: tuple[int, int, int], classes: int, channels: list[int], kernel: int, dense: int,
        dropout: float) -> ModelSpec:
    """[conv k x k 'same', ReLU, 2x2 max-pool] per channel count, dense, ReLU, dropout, dense.

    Raises ValueError when the image is too small for that many poolings.
    """
    h, w, c = in_shape
    layers: list[Layer] = []
    for i, out in enumerate(channels):
        if h < 2 or w < 2:
            raise ValueError(f"{len(channels)} conv blocks need {len(channels)} 2x2 poolings, but a "
                             f"{in_shape[0]}x{in_shape[1]} image allows only {i}")
        layers += [Conv(kernel, c, out), Act("relu"), Pool(2)]
        h, w, c = h // 2, w // 2, out
    layers += [Flatten(h, w, c), Dense(h * w * c, dense), Act("relu")]
    layers += [Dropout(dropout)] if dropout > 0 else []
    layers.append(Dense(dense, classes))
    return ModelSpec("cnn", in_shape, classes, tuple(layers))


def init_weights(spec: ModelSpec, seed: int) -> list[np.ndarray]:
    """Initial weights in canonical layout, drawn once in NumPy so both frameworks start identical.

    He-uniform for layers followed by ReLU, Glorot-uniform otherwise (tanh, sigmoid, the class layer);
    zero biases.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    weights: list[np.ndarray] = []
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Conv):
            fan_in, fan_out = layer.c_in * layer.k ** 2, layer.c_out * layer.k ** 2
            shape: tuple[int, ...] = (layer.k, layer.k, layer.c_in, layer.c_out)
        elif isinstance(layer, Dense):
            fan_in, fan_out, shape = layer.n_in, layer.n_out, (layer.n_in, layer.n_out)
        else:
            continue
        relu_next = i + 1 < len(spec.layers) and spec.layers[i + 1] == Act("relu")
        limit = np.sqrt(6.0 / fan_in) if relu_next else np.sqrt(6.0 / (fan_in + fan_out))
        weights += [rng.uniform(-limit, limit, shape).astype(np.float32), np.zeros(shape[-1], np.float32)]
    return weights


def dropout_masks(spec: ModelSpec, seed: int, epoch: int, n: int) -> list[np.ndarray]:
    """The units every framework's dropout keeps in one epoch: per Dropout layer, a (n, features) uint8 array of 0
    (dropped, with probability p) and 1, row i for the epoch's i-th sample in batch order, drawn from the seed alone.
    The same masks in every framework make their trajectories agree up to rounding, so steps to target agree
    (a framework's own masks would part them within a few steps). Dropout on a feature map is not supported here:
    the specs drop flat features only."""
    out, shape = [], spec.in_shape
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Conv):
            shape = (shape[0], shape[1], layer.c_out)
        elif isinstance(layer, Pool):
            shape = (shape[0] // layer.size, shape[1] // layer.size, shape[2])
        elif isinstance(layer, (Flatten, Dense)):
            shape = (layer.n_out,) if isinstance(layer, Dense) else (layer.h * layer.w * layer.c,)
        elif isinstance(layer, Dropout):
            if len(shape) != 1:
                raise ValueError(f"layer {i}: shared dropout masks are for flat features, not a {shape} map")
            draw = np.random.default_rng([seed, epoch, i, 0xD80F]).integers(0, 2**16, (n, shape[0]), np.uint16)
            out.append((draw >= round(layer.p * 2**16)).astype(np.uint8))  # keep with probability 1 - p
    return out


def batch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: the same NumPy permutation for both frameworks."""
    return np.random.default_rng([seed, epoch, 0xBA7C]).permutation(n)


def digest(arrays: list[np.ndarray]) -> str:
    """Short SHA-256 of arrays' bytes: evidence that two cells started from the same weights or order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# precision fp16's dynamic loss scaling, the same in both frameworks (torch.amp.GradScaler, Keras'
# LossScaleOptimizer): the loss is multiplied by the scale before the backward pass and the gradients divided by it;
# a step with a non-finite gradient is skipped and halves the scale, LOSS_SCALE_GROWTH finite steps in a row double
# it. Both frameworks' defaults differ (2^16 and 2^15 to start), so both are given these.
LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH = 2000


@dataclass(frozen=True)
class Optim:
    """Optimizer maths, every hyperparameter explicit (framework defaults differ, e.g. Adam's epsilon).

    sgd: w -= lr*g. momentum (heavy ball): b = momentum*b + g; w -= lr*b. adam (Kingma & Ba, Algorithm 1):
    m, v moving averages; w -= lr * m_hat / (sqrt(v_hat) + eps), eps added after bias correction.
    lr follows lr_at(step) when a warmup or decay is set.
    """
    name: str
    lr: float          # the peak rate of the schedule
    momentum: float
    beta1: float
    beta2: float
    eps: float
    warmup: float = 0.0    # epochs of linear warmup up to lr (in epochs, so small datasets are not all warmup)
    decay: str = "none"    # none | cosine | linear: from lr after the warmup down to 0 at the last step

    def constant(self) -> bool:
        return self.warmup == 0 and self.decay == "none"


def lr_at(o: Optim, step: int, total: int, per_epoch: int) -> float:
    """The learning rate of step `step` (0-based) of `total`, `per_epoch` steps an epoch: written once, so every
    framework gets the same rate at every step."""
    warm = round(o.warmup * per_epoch)
    if step < warm:
        return o.lr * (step + 1) / warm
    if o.decay == "none":
        return o.lr
    done = (step - warm) / max(total - warm - 1, 1)  # 0 at the first decayed step, 1 at the last
    if o.decay == "linear":
        return o.lr * (1.0 - done)
    return o.lr * 0.5 * (1.0 + math.cos(math.pi * done))
