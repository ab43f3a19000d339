"""The contract in JAX: a flax.linen network, optax, one jax.jit step with fp16 loss scaling.

The model is the flax module and its parameter tree; a step is one jitted function of (parameters, optimizer state,
loss scale, RNG key, batch, masks) that returns their new values, parameters and optimizer state donated. Threads,
dispatch and the XLA client are runtime.py's; the data loader is loader.py's; why there is no data-parallel engine,
and why children are forked after import on a CPU only, is in __init__.py.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from pipeline.backends.base import Backend, Feed, Step, Variant, refuse_no_gpu, refuse_precision
from pipeline.backends.jax import runtime
from pipeline.backends.jax.layers import Net, from_params, to_params
from pipeline.backends.jax.loader import device_batches
from pipeline.probe import speedo, telemetry
from pipeline.spec import LOSS_SCALE, LOSS_SCALE_GROWTH, ModelSpec, Optim, init_weights

COMPUTE = {"bf16": jnp.bfloat16, "fp16": jnp.float16}  # each conv and dense layer's dtype; parameters stay float32
# jax_default_matmul_precision: "highest" keeps float32 matmuls and convolutions float32 on a GPU (XLA's default
# there is TF32); "tensorfloat32" is TF32 itself
MATMUL = {"tf32": "tensorfloat32"}


@dataclass
class Model:
    """A flax network with its parameters: jax arrays are immutable, so each step replaces `params`."""
    net: Net
    params: dict


@dataclass
class Optimizer:
    """An optax transformation with its state, replaced by each step; under fp16 also the dynamic loss scale
    (scale, finite steps in a row), which stays on the device."""
    tx: optax.GradientTransformation
    state: Any
    scale: tuple | None = None

    def get_scale(self) -> float:
        """The current fp16 loss scale (as torch's GradScaler.get_scale)."""
        return float(self.scale[0])


class JaxBackend(Backend):
    NAME = "jax"
    MODEL_SUFFIX = ".msgpack"
    DEFAULT = "jit"
    VARIANTS = {"jit": Variant("jax.jit of the whole training step (forward, backward, optax update), parameters "
                               "and optimizer state donated; default")}
    ABSENT = {"compile": "the default step is already compiled whole by XLA (jax.jit): there is no eager path",
              "channels_last": "flax's convolutions take NHWC (channels-last) by default: its default is already "
                               "that layout",
              "cuda_graphs": "JAX has no switch of its own: XLA's GPU backend turns a jitted step's kernels into "
                             "CUDA graphs (command buffers) itself",
              "fit": "Keras' own training loop: JAX has none"}
    # what the first backend start and compilation import (MLIR's HLO dialects; the multihost helpers jax reads
    # the process count through); importing them starts no client and no thread (tests/test_jax.py)
    LAZY_IMPORTS = ("jaxlib.mlir.dialects.mhlo", "jax.experimental.multihost_utils")

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        use = telemetry.run_device(device)  # one device for every framework of the run, not what each finds
        if use == "cuda" and runtime.cuda_build() is None:
            refuse_no_gpu(device, "JAX", f"its CPU-only build is installed (pip install 'jax[cuda12]=="
                                         f"{jax.__version__}')")
        try:
            self.device = runtime.start(use, threads)
        except RuntimeError as e:  # the CUDA plugin is there and starts no GPU (driver, libraries)
            if use != "cuda":
                raise
            refuse_no_gpu(device, "JAX", f"its CUDA {runtime.cuda_build()} plugin finds no device "
                          f"({str(e).splitlines()[0][:200]})", built_for=runtime.cuda_build())
        name = self.device.device_kind if use == "cuda" else "cpu"
        refuse_precision(precision, name, runtime.capability(self.device) if use == "cuda" else None)
        # process-wide, as torch's allow_tf32 switches; read by every trace from here on
        jax.config.update("jax_default_matmul_precision", MATMUL.get(precision, "highest"))
        self.dtype = COMPUTE.get(precision, jnp.float32)
        self.reseed(seed)
        self.peak_base = 0  # the allocator's peak when reset_memory_peak last ran (XLA cannot reset its own)
        matmul = jax.config.values["jax_default_matmul_precision"]
        self.info = {"framework": self.NAME, "framework_version": jax.__version__, "device": name,
                     "jaxlib_version": jax.lib.__version__, "platform": self.device.platform,
                     "intra_op_threads": runtime.pool_threads(), "inter_op_threads": runtime.dispatch_threads(),
                     "matmul_precision": matmul, "precision": precision_of(matmul, self.dtype)}

    def reseed(self, seed: int) -> None:
        # flax's own dropout RNG, on the device; each step splits it there
        self.key = jax.device_put(jax.random.key(seed), self.device)

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Model:
        # copies on the device: the step donates (reuses) its parameters' memory, never the caller's arrays
        params = jax.device_put(to_params(spec, [np.array(w, np.float32) for w in weights]), self.device)
        return Model(Net(spec.layers, self.dtype), params)

    def get_weights(self, model: Model, spec: ModelSpec) -> list[np.ndarray]:
        return from_params(spec, model.params)

    def put(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return (jax.device_put(np.asarray(x, np.float32), self.device),
                jax.device_put(y.astype(np.int32), self.device))  # JAX's integers are 32 bits (x64 off)

    def take(self, data: tuple[jax.Array, jax.Array], idx: np.ndarray) -> tuple[jax.Array, jax.Array]:
        i = jax.device_put(idx.astype(np.int32), self.device)
        return jnp.take(data[0], i, axis=0), jnp.take(data[1], i, axis=0)

    def array(self, a: np.ndarray) -> jax.Array:
        return jax.device_put(a, self.device)

    def make_step(self, model: Model, optim: Optim, variant: str) -> Step:
        # every input of the compiled step placed on the device ("committed"), as its outputs are: jax compiles a
        # step again for inputs whose placement differs (optax's fresh state and a new rate are uncommitted), so the
        # second step, and each one after set_lr, would be a compilation
        opt = Optimizer(make_optimizer(optim), None)
        opt.state = jax.device_put(opt.tx.init(model.params), self.device)
        if self.dtype is jnp.float16:
            opt.scale = jax.device_put((np.float32(LOSS_SCALE), np.int32(0)), self.device)
        # the parameters and optimizer state are donated: XLA writes the new ones where the old ones were, as
        # torch's in-place updates do, instead of allocating both each step
        update = jax.jit(functools.partial(train_update, model.net, opt.tx, LOSS_SCALE_GROWTH),
                         donate_argnums=(0, 1))

        def step(xb: jax.Array, yb: jax.Array, keep: tuple | None = None) -> tuple[jax.Array, jax.Array]:
            key = self.key if keep is None else None  # shared masks: flax's RNG is neither used nor advanced
            model.params, opt.state, opt.scale, key, loss, correct = update(model.params, opt.state, opt.scale,
                                                                            key, xb, yb, keep)
            if keep is None:
                self.key = key
            return loss, correct

        def set_lr(lr: float) -> None:  # a new value of the same shape and dtype: the compiled step is reused
            opt.state.hyperparams["learning_rate"] = jax.device_put(np.float32(lr), self.device)
        return Step(step, opt, set_lr, opt if opt.scale is not None else None)

    def make_predict(self, model: Model, variant: str) -> Callable[[Any], Any]:
        forward = jax.jit(lambda params, xb: model.net.apply({"params": params}, xb).astype(jnp.float32))
        return lambda xb: forward(model.params, xb)  # the parameters as they are at the call

    def calibrate(self, threads: int, seconds: float = speedo.SECONDS) -> float:
        """On a GPU: a fixed matmul on the device at this backend's precision (bf16 and fp16 in their 16 bits, else
        float32 at the matmul precision in force), synchronised; on a CPU the shared NumPy GEMM."""
        if self.device.platform == "cpu":
            return super().calibrate(threads, seconds)
        return self._matmul_rate(speedo.DEVICE_SIZE, self.dtype, seconds)

    def reading(self, threads: int) -> float:
        if self.device.platform != "cpu":
            return super().reading(threads)
        # the CPU speedometer's matmul, in XLA's own kernels and intra-op pool
        return self._matmul_rate(speedo.SIZE, jnp.float32, speedo.READING_S)

    def _matmul_rate(self, n: int, dtype: Any, seconds: float) -> float:
        ka, kb = jax.random.split(jax.random.key(0))
        a, b = (jax.device_put(jax.random.normal(k, (n, n), dtype), self.device) for k in (ka, kb))
        mm = jax.jit(jnp.matmul)
        return speedo.burst_rate(lambda: mm(a, b), 2.0 * n**3, self.sync, seconds)

    def speedometer(self) -> str:
        if self.device.platform == "cpu":
            return super().speedometer()
        n = speedo.DEVICE_SIZE
        return f"jax matmul {n}x{n} {self.info['precision']} on {self.info['device']}"

    def reset_memory_peak(self) -> None:
        self.peak_base = runtime.memory_stats(self.device).get("peak_bytes_in_use", 0)

    def memory_peak_mb(self) -> float:
        """The allocator's peak where it rose since reset_memory_peak (then it is this phase's); NaN where it did
        not (this phase's peak is below an earlier one, which XLA keeps) and on a CPU (no statistics)."""
        peak = runtime.memory_stats(self.device).get("peak_bytes_in_use")
        return peak / 2**20 if peak is not None and peak > self.peak_base else super().memory_peak_mb()

    def numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t)

    def sync(self, out: Any = None) -> None:
        """Wait for the work that produced `out` (a GPU runs a jitted step asynchronously; a CPU program here has
        finished when its call returns: dispatch is synchronous, runtime.py)."""
        if out is not None:
            jax.block_until_ready(out)

    def save(self, model: Model, path: Path) -> None:
        # serialised in memory, written by Python: a full disk is the OSError naming the path
        path.write_bytes(serialization.to_bytes(jax.device_get(model.params)))

    def load(self, spec: ModelSpec, path: Path) -> Model:
        model = self.build(spec, init_weights(spec, 0))  # the tree to restore into: its names and shapes
        model.params = jax.device_put(serialization.from_bytes(jax.device_get(model.params), path.read_bytes()),
                                      self.device)
        return model

    def loader_settings(self, workers: list[int]) -> list[int | str]:
        return list(workers)

    def make_loader(self, feed: Feed, workers: int | str) -> Iterator[tuple[Any, Any]]:
        """Endless shuffled device batches (loader.py), `workers` = pool threads (0: inline). pin_memory and
        persistent_workers have no JAX counterpart: jax.device_put stages host memory itself, and the pool is
        threads that live as long as the iterator."""
        return device_batches(feed, int(workers), self.device)


def train_update(net: Net, tx: optax.GradientTransformation, growth: int, params: dict, state: Any,
                 scale: tuple | None, key: Any, xb: jax.Array, yb: jax.Array,
                 keep: tuple | None) -> tuple[dict, Any, tuple | None, Any, jax.Array, jax.Array]:
    """One update, traced whole by jax.jit: (params, optimizer state, loss scale, RNG key, loss summed over the
    batch, correct count). `scale`: fp16's (scale, finite steps in a row), else None; `key`: flax's dropout RNG,
    None with the shared masks `keep`."""
    rngs = {}
    if key is not None:
        key, rngs["dropout"] = jax.random.split(key)

    def loss_fn(p: dict) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits = net.apply({"params": p}, xb, train=True, keep=keep, rngs=rngs).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()  # in float32 at any precision
        return (loss if scale is None else loss * scale[0]), (loss, logits)
    grads, (loss, logits) = jax.grad(loss_fn, has_aux=True)(params)
    if scale is not None:
        grads = jax.tree.map(lambda g: g / scale[0], grads)  # exact: the scale is a power of two
    updates, new_state = tx.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    if scale is not None:
        params, state, scale = skip_or_apply(grads, (params, state), (new_params, new_state), scale, growth)
    else:
        params, state = new_params, new_state
    correct = jnp.sum(jnp.argmax(logits, 1) == yb)
    return params, state, scale, key, loss * yb.shape[0], correct


def skip_or_apply(grads: dict, old: tuple, new: tuple, scale: tuple, growth: int) -> tuple[dict, Any, tuple]:
    """fp16's dynamic loss scaling, torch's GradScaler and Keras' LossScaleOptimizer's rule with spec's settings: a
    non-finite gradient keeps the old parameters and optimizer state (Adam's step count too) and halves the scale;
    `growth` finite steps in a row double it."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    params, state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    good = jnp.where(finite, scale[1] + 1, 0)
    grow = good >= growth
    value = jnp.where(finite, jnp.where(grow, scale[0] * 2.0, scale[0]), scale[0] * 0.5)
    return params, state, (value, jnp.where(grow, 0, good).astype(jnp.int32))


def precision_of(matmul: str | None, dtype: Any) -> str:
    """The params.yaml precision that a matmul precision and a compute dtype are: bf16 / fp16 by the layers' dtype,
    tf32 by TF32 matmuls, fp32 only with float32 ones ("highest"); anything else as it is, which check_precision
    refuses (XLA's default on a GPU is TF32, not fp32)."""
    half = next((p for p, t in COMPUTE.items() if t is dtype), None)
    return half or {"tensorfloat32": "tf32", "highest": "fp32"}.get(matmul, f"matmul precision {matmul}")


def make_optimizer(o: Optim) -> optax.GradientTransformation:
    """Every hyperparameter explicit; only the learning rate is injected (a value in the optimizer state that
    set_lr replaces: no retrace), the others are constants of the compiled step. optax's momentum (trace) starts at
    zero with no dampening, as torch's; its Adam adds eps after bias correction with eps_root 0, as torch.optim.Adam
    does."""
    if o.name == "adam":
        return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root", "nesterov"))(
            learning_rate=o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps, eps_root=0.0, nesterov=False)
    return optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))(
        learning_rate=o.lr, momentum=o.momentum if o.name == "momentum" else None, nesterov=False)


BACKEND = JaxBackend
