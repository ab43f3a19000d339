"""TensorFlow / Keras 3 backend. Same function names and signatures as torch_backend."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep stage logs readable; errors still show
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from pipeline import timing  # noqa: E402
from pipeline.errors import ParamsError  # noqa: E402
from pipeline.spec import Act, Conv, Dense, Dropout, Flatten, ModelSpec, Optim, Pool  # noqa: E402

NAME = "tensorflow"
MODEL_SUFFIX = ".keras"
DEFAULT = "function"  # the variant `train` uses: each framework's everyday fast path
VARIANTS = {"function": "custom train step in tf.function (graph, no XLA; default)",
            "xla": "the same whole train step in tf.function(jit_compile=True)",
            "fit": "Keras Model.fit over the same in-memory batches fed through tf.data (includes tf.data's "
                   "input handling), compile()'s defaults (jit_compile='auto': XLA on a GPU, off on a CPU)"}
_device = "/CPU:0"


def setup(threads: int, device: str, seed: int) -> dict:
    """Threads, device and RNG; must run before TensorFlow executes anything in this process."""
    global _device
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cuda" and not gpus:
        raise ParamsError("params.yaml: device: cuda, but TensorFlow sees no GPU (use auto or cpu)")
    _device = "/CPU:0" if device == "cpu" or not gpus else "/GPU:0"
    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)  # like torch: ops run one after another
        if _device == "/CPU:0" and gpus:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already running in this process (tests): the first settings stay
        pass
    reseed(seed)
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu") if _device != "/CPU:0" \
        else "cpu"
    return {"framework": NAME, "framework_version": tf.__version__, "keras_version": keras.__version__,
            "device": name, "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or
            os.cpu_count(), "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


def reseed(seed: int) -> None:
    """Seed the framework's RNG (dropout masks) so a rerun with the same seed repeats exactly."""
    keras.utils.set_random_seed(seed)  # Python, NumPy and TF seeds


def variants(compile: list[bool], keras_fit: bool) -> list[str]:
    """The training/inference variants to benchmark; the first is the default used by `train`."""
    out = [v for v, on in (("function", False), ("xla", True)) if on in compile]
    return out + (["fit"] if keras_fit else [])


def _layer(layer: object) -> keras.layers.Layer:
    match layer:
        case Conv(k, _, c_out):
            return keras.layers.Conv2D(c_out, k, padding="same")
        case Pool(size):
            return keras.layers.MaxPooling2D(size)
        case Flatten():
            return keras.layers.Flatten()
        case Dense(_, n_out):
            return keras.layers.Dense(n_out)
        case Dropout(p):
            return keras.layers.Dropout(p)
        case Act(fn):
            return keras.layers.ReLU() if fn == "relu" else keras.layers.Activation(fn)
    raise TypeError(f"unknown layer {layer!r}")


def build(spec: ModelSpec, weights: list[np.ndarray]) -> keras.Model:
    with tf.device(_device):
        model = keras.Sequential([keras.Input(spec.in_shape)] + [_layer(layer) for layer in spec.layers],
                                 name=spec.name)
        model.set_weights(weights)  # canonical layout is Keras' own: HWIO kernels, (in, out) dense, NHWC flatten
    return model


def get_weights(model: keras.Model, spec: ModelSpec) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def put(x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.device(_device):
        return tf.constant(x, tf.float32), tf.constant(y.astype(np.int64))


def take(data: tuple[tf.Tensor, tf.Tensor], idx: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    i = tf.constant(idx)
    return tf.gather(data[0], i), tf.gather(data[1], i)


class _TorchFormAdam(keras.optimizers.Adam):
    """Adam with epsilon added after bias correction, as torch.optim.Adam and the paper's Algorithm 1.

    Keras' Adam adds epsilon to sqrt(v) before bias correction, which equals torch's eps scaled by
    sqrt(1 - beta2^t): a different optimizer in the first thousands of steps.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dt = variable.dtype
        lr, g = ops.cast(learning_rate, dt), ops.cast(gradient, dt)
        t = ops.cast(self.iterations + 1, dt)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(g, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(g), v), 1 - self.beta_2))
        m_hat = ops.divide(m, 1 - ops.power(ops.cast(self.beta_1, dt), t))
        v_hat = ops.divide(v, 1 - ops.power(ops.cast(self.beta_2, dt), t))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, m_hat), ops.add(ops.sqrt(v_hat), self.epsilon)))


def _make_optimizer(o: Optim) -> keras.optimizers.Optimizer:
    if o.name == "adam":
        return _TorchFormAdam(learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps, amsgrad=False,
                              name="torch_form_adam")  # Keras derives scope names from the class name otherwise
    return keras.optimizers.SGD(learning_rate=o.lr, momentum=o.momentum if o.name == "momentum" else 0.0,
                                nesterov=False)


_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # mean over the batch, on logits


def make_step(model: keras.Model, optim: Optim, variant: str) -> Callable[[Any, Any], tuple[Any, Any]]:
    """One optimizer step on a batch: returns (loss summed over the batch, correct count)."""
    opt = _make_optimizer(optim)
    opt.build(model.trainable_variables)

    @tf.function(jit_compile=variant == "xla", reduce_retracing=True)
    def step(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = _loss(yb, logits)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        n = tf.cast(tf.shape(yb)[0], tf.float32)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), yb), tf.int64))
        return loss * n, correct
    step.optimizer = opt  # type: ignore[attr-defined]  # tests inspect the optimizer's state
    return step


def set_lr(step: Callable, lr: float) -> None:
    step.optimizer.learning_rate.assign(lr)  # a variable the compiled step reads: no retrace


def make_predict(model: keras.Model, variant: str) -> Callable[[Any], Any]:
    if variant == "fit":  # Keras' own inference path
        return lambda xb: model.predict_on_batch(xb)
    return tf.function(lambda xb: model(xb, training=False), jit_compile=variant == "xla", reduce_retracing=True)


def train_timings(model: keras.Model, optim: Optim, data: Any, order: np.ndarray, variant: str, batch_size: int,
                  warmup: int, steps: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first step, which includes tracing/compilation; seconds per step of each timed repeat),
    stepping through `order` in full batches as the train stage does."""
    if variant != "fit":
        return timing.step_timings(take, make_step(model, optim, variant), sync, data, order, batch_size, warmup,
                                   steps, repeats)
    # Model.fit over the same in-memory batches in the same order, fed through tf.data (so its figure includes
    # tf.data's input handling). One epoch of 1 step is the first step, one of warmup-1 steps the rest of the warmup,
    # then one epoch of `steps` steps per timed repeat.
    model.compile(optimizer=_make_optimizer(optim), loss=_loss)
    full = len(order) // batch_size * batch_size
    ds = tf.data.Dataset.from_tensor_slices(take(data, order[:full])).batch(batch_size, drop_remainder=True).repeat()
    marks: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(time.perf_counter()),
                                           on_epoch_end=lambda e, logs: marks.append(time.perf_counter()))
    # Each fit() call starts a new iterator: skip() makes it continue the batch sequence where the last one ended.
    model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False, callbacks=[clock])
    first = marks[1] - marks[0]
    if warmup > 1:
        model.fit(ds.skip(1), epochs=1, steps_per_epoch=warmup - 1, verbose=0, shuffle=False)
    marks.clear()
    model.fit(ds.skip(warmup), epochs=repeats, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[clock])
    return first, [(marks[i + 1] - marks[i]) / steps for i in range(0, len(marks), 2)]


def numpy(t: Any) -> np.ndarray:
    return np.asarray(t)


def sync(out: Any = None) -> None:
    """Wait for the result: reading a value back forces TF's (possibly asynchronous) work to finish."""
    if out is not None:
        np.asarray(tf.nest.flatten(out)[0])


def save(model: keras.Model, path: Path) -> None:
    model.save(path)


def load(spec: ModelSpec, path: Path) -> keras.Model:
    return keras.models.load_model(path, custom_objects={"_TorchFormAdam": _TorchFormAdam})


def loader_settings(workers: list[int]) -> list[int | str]:
    return list(workers) + ["autotune"]


def make_loader(images: np.ndarray, labels: np.ndarray, mean: float, std: float, batch_size: int,
                workers: int | str, shift: int, seed: int, pin_memory: bool, persistent_workers: bool,
                prefetch: int) -> Iterator[tuple[Any, Any]]:
    """An endless iterator of shuffled (x, y) batches through tf.data, per-sample map as in torch's Dataset."""
    h, w = images.shape[1:3]
    imgs, labs = tf.constant(images), tf.constant(labels.astype(np.int64))
    gen = tf.random.Generator.from_seed(seed)

    def per_sample(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = (tf.cast(tf.gather(imgs, i), tf.float32) / 255.0 - mean) / std
        if shift:
            d = gen.uniform((2,), 0, 2 * shift + 1, dtype=tf.int32)
            x = tf.pad(x, [[shift, shift], [shift, shift]])[d[0]:d[0] + h, d[1]:d[1] + w]
        return x[..., None], tf.gather(labs, i)

    calls = tf.data.AUTOTUNE if workers == "autotune" else (int(workers) or None)  # None: sequential
    ds = tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(per_sample, num_parallel_calls=calls).batch(batch_size, drop_remainder=True)
    if workers != 0:  # 0 workers means no background work at all, as with torch's num_workers=0
        ds = ds.prefetch(prefetch)
    if workers == 0:
        opts = tf.data.Options()
        opts.autotune.enabled = False
        ds = ds.with_options(opts)
    return iter(ds.repeat())
