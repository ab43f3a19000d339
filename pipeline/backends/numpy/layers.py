"""Hand-written forward and backward passes, layer by layer, and the optimizers in NumPy.

Teaching code first. Each layer is a small class whose forward and backward passes sit side by side: `forward`
keeps what `backward` needs; `backward(dy)` stores the weight gradients in `.grads` and returns dx. Shapes in the
comments: N batch, H x W image, C channels, K kernel size, F features. Weights are kept in the canonical layouts of
spec.py, which are NumPy's natural ones (NHWC images, (K, K, C_in, C_out) and (F_in, F_out) kernels), so nothing
is converted. Every array is float32, as in the frameworks; the layers keep whatever dtype they are given, which
lets the gradient checks run them in float64.
"""
from __future__ import annotations

import numpy as np

from pipeline.spec import Act, Conv, Dense, Dropout, Flatten, ModelSpec, Optim, Pool


class Linear:
    """y = x W + b."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.params = [w, b]  # W (F_in, F_out), b (F_out,)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:  # x (N, F_in) -> (N, F_out)
        self.x = x
        return x @ self.params[0] + self.params[1]

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray | None:  # dy (N, F_out) -> (N, F_in)
        self.grads = [self.x.T @ dy, dy.sum(axis=0)]  # dW (F_in, F_out): every sample's x_i dy_i^T, summed
        return dy @ self.params[0].T if want_dx else None


class Conv2D:
    """K x K convolution, 'same' zero padding, stride 1, as one matmul over im2col patches."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.params = [w, b]  # W (K, K, C_in, C_out), b (C_out,)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:  # x (N, H, W, C_in) -> (N, H, W, C_out)
        w, b = self.params
        k, p = w.shape[0], w.shape[0] // 2
        n, h, wd, c = x.shape
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        # im2col: the image shifted by each of the K*K kernel offsets, so that row (n, i, j) holds pixel (i, j)'s
        # receptive field in the kernel's own (kh, kw, c) order: (N*H*W, K*K*C_in)
        self.cols = np.stack([xp[:, i:i + h, j:j + wd, :] for i in range(k) for j in range(k)], axis=3)
        self.cols = self.cols.reshape(n * h * wd, k * k * c)
        self.x_shape = x.shape
        y = self.cols @ w.reshape(k * k * c, -1) + b  # (N*H*W, C_out)
        return y.reshape(n, h, wd, -1)

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray | None:  # dy (N, H, W, C_out)
        w, _ = self.params
        k, p = w.shape[0], w.shape[0] // 2
        n, h, wd, c = self.x_shape
        dy2 = dy.reshape(-1, w.shape[3])  # (N*H*W, C_out)
        self.grads = [(self.cols.T @ dy2).reshape(w.shape), dy2.sum(axis=0)]
        if not want_dx:
            return None
        # col2im: kernel offset (i, j) read the image shifted by (i, j); its gradient goes back there through that
        # offset's own (C_in, C_out) slice of W, summed over the offsets (one K*K times larger matmul does the same
        # work but allocates a (N*H*W, K*K*C_in) array, slower here than these K*K small ones)
        dxp = np.zeros((n, h + 2 * p, wd + 2 * p, c), dy.dtype)
        for i in range(k):
            for j in range(k):
                dxp[:, i:i + h, j:j + wd, :] += dy @ w[i, j].T  # (N, H, W, C_out) @ (C_out, C_in)
        return dxp[:, p:p + h, p:p + wd, :]


class MaxPool:
    """size x size max-pool, stride = size; a last odd row/column is dropped, as in both frameworks."""

    def __init__(self, size: int):
        self.s, self.params = size, []

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:  # (N, H, W, C) -> (N, H//s, W//s, C)
        n, h, w, c = x.shape
        s, ho, wo = self.s, h // self.s, w // self.s
        self.x_shape = x.shape
        # each window's s*s values on the last axis: (N, Ho, Wo, C, s*s)
        win = x[:, :ho * s, :wo * s].reshape(n, ho, s, wo, s, c).transpose(0, 1, 3, 5, 2, 4)
        win = win.reshape(n, ho, wo, c, s * s)
        self.arg = win.argmax(axis=-1)  # (N, Ho, Wo, C): which input won; only it gets the gradient
        return np.take_along_axis(win, self.arg[..., None], axis=-1)[..., 0]

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray:  # (N, Ho, Wo, C) -> (N, H, W, C)
        n, h, w, c = self.x_shape
        s, (_, ho, wo, _) = self.s, dy.shape
        dwin = np.zeros((n, ho, wo, c, s * s), dy.dtype)
        np.put_along_axis(dwin, self.arg[..., None], dy[..., None], axis=-1)
        dx = np.zeros(self.x_shape, dy.dtype)
        back = dwin.reshape(n, ho, wo, c, s, s).transpose(0, 1, 4, 2, 5, 3)  # (N, Ho, s, Wo, s, C), as forward
        dx[:, :ho * s, :wo * s] = back.reshape(n, ho * s, wo * s, c)
        return dx


class Reshape:
    """(N, H, W, C) -> (N, H*W*C): NHWC memory is already in the canonical (h, w, c) order."""
    params: list = []

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self.x_shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray:
        return dy.reshape(self.x_shape)


class ReLU:
    params: list = []

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self.on = x > 0
        return x * self.on

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray:
        return dy * self.on  # slope 1 where x > 0, else 0 (0 at x = 0, as in torch)


class Tanh:
    params: list = []

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray:
        return dy * (1 - self.y * self.y)  # tanh' = 1 - tanh^2


class Sigmoid:
    params: list = []

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self.y = 0.5 * (1 + np.tanh(0.5 * x))  # = 1 / (1 + e^-x), without overflowing exp for large -x
        return self.y

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray:
        return dy * self.y * (1 - self.y)  # sigmoid' = sigmoid (1 - sigmoid)


class DropOut:
    """Inverted dropout: in training, zero each value with probability p and scale survivors by 1/(1-p), so
    inference needs no rescaling."""

    def __init__(self, p: float, rng: np.random.Generator):
        self.p, self.rng, self.params = p, rng, []

    def forward(self, x: np.ndarray, train: bool, keep: np.ndarray | None = None) -> np.ndarray:
        """`keep`: the run's shared mask of this layer (0/1), else one drawn here."""
        if not train:
            return x
        kept = keep if keep is not None else self.rng.random(x.shape, dtype=np.float32) >= self.p
        self.mask = kept.astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self.mask

    def backward(self, dy: np.ndarray, want_dx: bool = True) -> np.ndarray:
        return dy * self.mask


class SoftmaxCrossEntropy:
    """The loss: mean over the batch of -log softmax(logits)[label], on logits (N, classes)."""

    def forward(self, logits: np.ndarray, y: np.ndarray) -> float:
        z = logits - logits.max(axis=1, keepdims=True)  # shifting by the max leaves softmax as it is, avoids overflow
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        self.p, self.y = np.exp(log_p), y
        return float(-log_p[np.arange(len(y)), y].mean())

    def backward(self) -> np.ndarray:  # dloss/dlogits = (softmax - one_hot(y)) / N: (N, classes)
        d = self.p.copy()
        d[np.arange(len(self.y)), self.y] -= 1
        return d / d.dtype.type(len(self.y))


class Net:
    """The spec's layers in order; weights shared with the layers (updating them in place updates the net)."""

    def __init__(self, spec: ModelSpec, weights: list[np.ndarray], rng: np.random.Generator):
        it = iter(weights)
        make = {Conv: lambda _: Conv2D(next(it), next(it)), Dense: lambda _: Linear(next(it), next(it)),
                Pool: lambda layer: MaxPool(layer.size), Flatten: lambda _: Reshape(),
                Dropout: lambda layer: DropOut(layer.p, rng),
                Act: lambda layer: {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}[layer.fn]()}
        self.layers = [make[type(layer)](layer) for layer in spec.layers]
        self.params = [p for layer in self.layers for p in layer.params]

    def forward(self, x: np.ndarray, train: bool, keep: tuple | None = None) -> np.ndarray:
        """Logits; `keep`: the shared dropout masks, one per DropOut layer in order (else each draws its own)."""
        masks = iter(keep or ())
        for layer in self.layers:
            x = layer.forward(x, train, next(masks)) if keep and isinstance(layer, DropOut) else layer.forward(x, train)
        return x

    def backward(self, d: np.ndarray) -> list[np.ndarray]:
        """Gradients of every weight, in params order, from dloss/dlogits. Stops at the first layer with weights:
        nobody needs the gradient of the images (autograd skips it too)."""
        first = next(i for i, layer in enumerate(self.layers) if layer.params)
        for i in range(len(self.layers) - 1, first - 1, -1):
            d = self.layers[i].backward(d, want_dx=i > first)
        return [g for layer in self.layers for g in getattr(layer, "grads", [])]


class Optimizer:
    """spec.Optim's update rules, in place on the weights (the forms torch.optim uses)."""

    def __init__(self, o: Optim, params: list[np.ndarray]):
        self.o, self.lr, self.t = o, o.lr, 0
        self.m = [np.zeros_like(p) for p in params]  # momentum buffer / Adam's first moment
        self.v = [np.zeros_like(p) for p in params]  # Adam's second moment

    def update(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        o, lr = self.o, self.lr
        self.t += 1
        for w, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            if o.name == "sgd":
                w -= lr * g
            elif o.name == "momentum":  # heavy ball: b = momentum b + g; w -= lr b
                m *= o.momentum
                m += g
                w -= lr * m
            else:  # Adam, eps added after bias correction
                m += (1 - o.beta1) * (g - m)
                v += (1 - o.beta2) * (g * g - v)
                m_hat, v_hat = m / (1 - o.beta1 ** self.t), v / (1 - o.beta2 ** self.t)
                w -= lr * m_hat / (np.sqrt(v_hat) + o.eps)
