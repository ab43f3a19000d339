"""The contract in TensorFlow/Keras 3: a tf.function train step; XLA and Model.fit variants."""
from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep stage logs readable; errors still show
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from pipeline.backends.base import (TENSOR_CORES_16, Backend, Feed, Step, Variant, refuse_no_gpu,  # noqa: E402
                                    refuse_precision)
from pipeline.probe import speedo, telemetry  # noqa: E402
from pipeline.probe.timing import MAX_STEPS, lengthened  # noqa: E402
from pipeline.backends.tensorflow.layers import keras_layer  # noqa: E402
from pipeline.backends.tensorflow.optim import TorchFormAdam, make_optimizer, scaled_loss  # noqa: E402
from pipeline.spec import ModelSpec, Optim  # noqa: E402


POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # Keras' mixed precision: 16-bit compute, fp32 weights


def cuda_fix() -> str:
    """How to give TensorFlow the GPU it does not see: its CUDA libraries are separate packages (requirements-cuda.txt,
    which `make` installs where nvidia-smi lists a GPU), and once installed they can still fail to load."""
    try:
        importlib.metadata.version("nvidia-cudnn-cu12")
    except importlib.metadata.PackageNotFoundError:
        return ("its CUDA libraries are not installed: make venv CUDA=1 (requirements-cuda.txt, README \"Install\"), "
                f"or pip install 'tensorflow[and-cuda]=={tf.__version__}'")
    return ("its CUDA libraries (requirements-cuda.txt) are installed but did not load: TF_CPP_MIN_LOG_LEVEL=0 shows "
            "TensorFlow's reason (the library it could not open, and why)")


class TensorFlowBackend(Backend):
    NAME = "tensorflow"
    MODEL_SUFFIX = ".keras"
    DEFAULT = "function"
    VARIANTS = {"function": Variant("custom train step in tf.function (graph, no XLA; default)"),
                "xla": Variant("the same whole train step in tf.function(jit_compile=True)", asked_by="compile"),
                "fit": Variant("Keras Model.fit over the same in-memory batches fed through tf.data (includes "
                               "tf.data's input handling), compile()'s defaults (jit_compile='auto': XLA on a GPU, "
                               "off on a CPU)", asked_by="fit")}
    ABSENT = {"channels_last": "TensorFlow's convolutions take NHWC (channels-last) by default: its default is "
                               "already that layout",
              "cuda_graphs": "TensorFlow has no switch of its own: its `xla` variant (bench.variants compile) is "
                             "the launch-overhead remedy there"}

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        """Must run before TensorFlow executes anything in this process (its settings are process-wide)."""
        gpus, use = tf.config.list_physical_devices("GPU"), telemetry.run_device(device)
        if use == "cuda" and not gpus:  # one device for every framework of the run, not what each finds
            refuse_no_gpu(device, "TensorFlow", cuda_fix(), built_for=tf.sysconfig.get_build_info().get("cuda_version"))
        self.device = "/GPU:0" if use == "cuda" else "/CPU:0"
        try:
            if use == "cuda":
                # the one GPU PyTorch computes on too (cuda:0: CUDA_VISIBLE_DEVICES' first). Left alone, TensorFlow
                # starts every visible GPU and reserves nearly all of each one's memory; PyTorch takes what it
                # allocates. Growth makes TensorFlow do the same, so NVML's memory in use compares, and a shared
                # machine's other GPUs (and jobs) are left alone.
                tf.config.set_visible_devices(gpus[0], "GPU")
                tf.config.experimental.set_memory_growth(gpus[0], True)
        except RuntimeError:  # TF already running in this process (tests): the first settings stay
            pass
        try:
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)  # like torch: ops run one after another
            if self.device == "/CPU:0" and gpus:
                tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already running in this process (tests): the first settings stay
            pass
        details = tf.config.experimental.get_device_details(gpus[0]) if use == "cuda" else {}
        name = details.get("device_name", "gpu") if use == "cuda" else "cpu"
        refuse_precision(precision, name, tuple(details.get("compute_capability", TENSOR_CORES_16))  # unknown: let be
                         if use == "cuda" else None)
        # fp32 means fp32: TensorFlow runs float32 matmuls and convolutions in TF32 on Ampere and newer by default
        tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
        # bf16 / fp16: each layer built with Keras' mixed_bfloat16 / mixed_float16 policy (16-bit compute, float32
        # weights); a policy per model, not Keras' process-wide global one
        self.dtype = POLICIES.get(precision, "float32")
        self.loss_scaled = self.dtype == "mixed_float16"  # float16's range needs it; bfloat16's does not
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # batch mean, on logits
        # cuDNN's per-shape algorithm timing, TensorFlow's default, made explicit (the environment can turn it off):
        # the PyTorch backend turns its own on (cudnn.benchmark); read when the first convolution runs
        os.environ["TF_CUDNN_USE_AUTOTUNE"] = "1"
        self.reseed(seed)
        self.info = {"framework": self.NAME, "framework_version": tf.__version__,
                     "keras_version": keras.__version__, "device": name,
                     "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
                     "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                     "conv_autotune": os.environ["TF_CUDNN_USE_AUTOTUNE"] == "1",
                     "precision": ("tf32" if tf.config.experimental.tensor_float_32_execution_enabled() else
                                   next((p for p, d in POLICIES.items() if d == self.dtype), "fp32"))}

    def reseed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)  # Python, NumPy and TF seeds

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> keras.Model:
        with tf.device(self.device):
            model = keras.Sequential([keras.Input(spec.in_shape)] + [keras_layer(layer, self.dtype)
                                                                     for layer in spec.layers], name=spec.name)
            model.set_weights(weights)  # canonical layout is Keras' own: HWIO kernels, (in, out), NHWC flatten
        return model

    def get_weights(self, model: keras.Model, spec: ModelSpec) -> list[np.ndarray]:
        return [np.asarray(w) for w in model.get_weights()]

    def put(self, x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.device(self.device):
            return tf.constant(x, tf.float32), tf.constant(y.astype(np.int64))

    def take(self, data: tuple[tf.Tensor, tf.Tensor], idx: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        i = tf.constant(idx)
        return tf.gather(data[0], i), tf.gather(data[1], i)

    def array(self, a: np.ndarray) -> tf.Tensor:
        with tf.device(self.device):
            return tf.constant(a)

    def make_step(self, model: keras.Model, optim: Optim, variant: str) -> Step:
        opt, loss_fn = make_optimizer(optim, self.loss_scaled), self.loss
        opt.build(model.trainable_variables)

        @tf.function(jit_compile=variant == "xla", reduce_retracing=True)
        def step(xb: tf.Tensor, yb: tf.Tensor, keep: tuple | None = None) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                out = model(xb, training=True) if keep is None else _masked(model, xb, keep)
                logits = tf.cast(out, tf.float32)  # the loss in float32 at any precision
                loss = loss_fn(yb, logits)
                scaled = scaled_loss(opt, loss)  # fp16: the optimizer unscales, and skips a non-finite update
            opt.apply_gradients(zip(tape.gradient(scaled, model.trainable_variables), model.trainable_variables))
            n = tf.cast(tf.shape(yb)[0], tf.float32)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), yb), tf.int64))
            return loss * n, correct
        # the rate is a variable the compiled step reads: setting it does not retrace
        return Step(step, opt, lambda lr: opt.learning_rate.assign(lr))

    def make_predict(self, model: keras.Model, variant: str) -> Callable[[Any], Any]:
        if variant == "fit":  # Keras' own inference path
            return lambda xb: model.predict_on_batch(xb)
        return tf.function(lambda xb: tf.cast(model(xb, training=False), tf.float32), jit_compile=variant == "xla",
                           reduce_retracing=True)

    def train_timings(self, model: keras.Model, optim: Optim, data: Any, order: np.ndarray, variant: str,
                      batch_size: int, warmup: int, steps: int, repeats: int, min_s: float = 0.0,
                      clock: Callable[[], float] = time.perf_counter) -> tuple[float, list[float]]:
        if variant != "fit":
            return super().train_timings(model, optim, data, order, variant, batch_size, warmup, steps, repeats,
                                         min_s, clock)
        # Model.fit over the same in-memory batches in the same order, fed through tf.data (so its figure includes
        # tf.data's input handling). One epoch of 1 step is the first step, one of warmup-1 steps the rest of the
        # warmup, then one epoch of `steps` steps per timed repeat.
        now = clock
        model.compile(optimizer=make_optimizer(optim, self.loss_scaled), loss=self.loss)
        full = len(order) // batch_size * batch_size
        ds = tf.data.Dataset.from_tensor_slices(self.take(data, order[:full])).batch(batch_size, drop_remainder=True)
        ds = ds.repeat()
        marks: list[float] = []
        clock = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(now()),
                                               on_epoch_end=lambda e, logs: marks.append(now()))
        # Each fit() call starts a new iterator: skip() continues the batch sequence where the last one ended.
        model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False, callbacks=[clock])
        first = marks[1] - marks[0]
        if warmup > 1:
            model.fit(ds.skip(1), epochs=1, steps_per_epoch=warmup - 1, verbose=0, shuffle=False)
        marks.clear()
        while min_s:  # untimed epochs size the repeats until one lasts min_s, as timing.repeat's do
            model.fit(ds.skip(warmup), epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[clock])
            warmup, took = warmup + steps, marks[1] - marks[0]
            marks.clear()
            if took >= min_s or steps >= MAX_STEPS:
                break
            steps = lengthened(steps, took, min_s)
        model.fit(ds.skip(warmup), epochs=repeats, steps_per_epoch=steps, verbose=0, shuffle=False,
                  callbacks=[clock])
        return first, [(marks[i + 1] - marks[i]) / steps for i in range(0, len(marks), 2)]

    def reset_memory_peak(self) -> None:
        if self.device != "/CPU:0":
            tf.config.experimental.reset_memory_stats(self.device.strip("/"))

    def memory_peak_mb(self) -> float:
        if self.device == "/CPU:0":
            return super().memory_peak_mb()
        return tf.config.experimental.get_memory_info(self.device.strip("/"))["peak"] / 2**20

    def calibrate(self, threads: int, seconds: float = speedo.SECONDS) -> float:
        """On a GPU: a fixed matmul on the device at this backend's precision (bf16 and fp16 in their 16 bits, else
        float32 with the TF32 setting in force), synchronised; on a CPU the shared NumPy GEMM."""
        if self.device == "/CPU:0":
            return super().calibrate(threads, seconds)
        n = speedo.DEVICE_SIZE
        with tf.device(self.device):
            gen = tf.random.Generator.from_seed(0)
            a, b = (tf.cast(gen.normal((n, n)), keras.DTypePolicy(self.dtype).compute_dtype) for _ in "ab")
            mm = tf.function(lambda: tf.matmul(a, b)[0, 0])  # one element read back waits for the whole product
            return speedo.burst_rate(mm, 2.0 * n**3, self.sync, seconds)

    def reading(self, threads: int) -> float:
        if self.device != "/CPU:0":
            return super().reading(threads)
        n = speedo.SIZE  # the CPU speedometer's matmul, in TensorFlow's own kernels and intra-op threads
        with tf.device(self.device):
            gen = tf.random.Generator.from_seed(0)
            a, b = gen.normal((n, n)), gen.normal((n, n))
            mm = tf.function(lambda: tf.matmul(a, b)[0, 0])
            return speedo.burst_rate(mm, 2.0 * n**3, self.sync, speedo.READING_S)

    def speedometer(self) -> str:
        if self.device == "/CPU:0":
            return super().speedometer()
        n = speedo.DEVICE_SIZE
        return f"tf.matmul {n}x{n} {self.info['precision']} on {self.info['device']}"

    def numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t)

    def sync(self, out: Any = None) -> None:
        """Wait for the result: reading a value back forces TF's (possibly asynchronous) work to finish."""
        if out is not None:
            np.asarray(tf.nest.flatten(out)[0])

    def save(self, model: keras.Model, path: Path) -> None:
        model.save(path)

    def load(self, spec: ModelSpec, path: Path) -> keras.Model:
        return keras.models.load_model(path, custom_objects={"TorchFormAdam": TorchFormAdam})

    def loader_settings(self, workers: list[int]) -> list[int | str]:
        return list(workers) + ["autotune"]

    def make_loader(self, feed: Feed, workers: int | str) -> Iterator[tuple[Any, Any]]:
        """Endless shuffled batches through tf.data, a per-sample map as in torch's Dataset; `workers` =
        num_parallel_calls (or "autotune")."""
        h, w = feed.images.shape[1:3]
        imgs, labs = tf.constant(feed.images), tf.constant(feed.labels.astype(np.int64))
        gen = tf.random.Generator.from_seed(feed.seed)
        mean, std, shift = feed.mean, feed.std, feed.shift

        def per_sample(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x = (tf.cast(tf.gather(imgs, i), tf.float32) / 255.0 - mean) / std
            if shift:
                d = gen.uniform((2,), 0, 2 * shift + 1, dtype=tf.int32)
                x = tf.pad(x, [[shift, shift], [shift, shift]])[d[0]:d[0] + h, d[1]:d[1] + w]
            return x[..., None], tf.gather(labs, i)

        calls = tf.data.AUTOTUNE if workers == "autotune" else (int(workers) or None)  # None: sequential
        n = len(feed.labels)
        ds = tf.data.Dataset.range(n).shuffle(n, seed=feed.seed, reshuffle_each_iteration=True)
        ds = ds.map(per_sample, num_parallel_calls=calls).batch(feed.batch_size, drop_remainder=True)
        if workers != 0:  # 0 workers means no background work at all, as with torch's num_workers=0
            ds = ds.prefetch(feed.prefetch)
        else:
            opts = tf.data.Options()
            opts.autotune.enabled = False
            ds = ds.with_options(opts)
        return iter(ds.repeat())


def _masked(model: keras.Model, x: tf.Tensor, keep: tuple) -> tf.Tensor:
    """The model in training mode with each Dropout layer replaced by its shared mask, kept units scaled by 1/(1-p)."""
    masks = iter(keep)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            x = x * tf.cast(next(masks), x.dtype) * tf.cast(1.0 / (1.0 - layer.rate), x.dtype)
        else:
            x = layer(x, training=True)
    return x


BACKEND = TensorFlowBackend
