"""TensorFlow's data-parallel engine: MultiWorkerMirroredStrategy, one process per worker."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from pipeline.backends.engine import Engine, Launch, StepFn, worker_command
from pipeline.probe import telemetry
from pipeline.spec import ModelSpec, Optim


class TFMultiWorker(Engine):
    """MultiWorkerMirroredStrategy: each worker process reads its place in the cluster from TF_CONFIG (absent for a
    single worker); the Keras optimizer all-reduces (sums) the gradients inside strategy.run."""

    @staticmethod
    def commands(workers: int, host: str, port: int, worker_args: list[str]) -> Launch:
        """TensorFlow has no launcher: each worker is its own process with TF_CONFIG naming the cluster (ports
        port .. port+N-1), as a cluster manager would start it."""
        module = worker_command(worker_args)
        if workers == 1:
            return [(module, {})]  # one worker: the same strategy, no cluster
        cluster = [f"{host}:{port + r}" for r in range(workers)]
        # One GPU per worker, as torchrun's LOCAL_RANK gives PyTorch's: a TensorFlow worker would take every visible
        # GPU otherwise. Harmless without GPUs; the r-th of the devices the user made visible, none if they hid all.
        visible = telemetry.visible_devices()
        gpus = visible if visible is not None else [str(r) for r in range(workers)]
        return [(module, {"TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker",
                                                                                           "index": r}}),
                          "CUDA_VISIBLE_DEVICES": gpus[r] if r < len(gpus) else ""})
                for r in range(workers)]

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        from pipeline.backends.tensorflow.backend import BACKEND
        self.be = BACKEND(threads, device, seed, precision)  # threads first: process-wide, set once
        import tensorflow as tf
        self.tf = tf
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
        self.rank = int(cluster.get("task", {}).get("index", 0))
        self.world = len(cluster.get("cluster", {}).get("worker", [])) or 1
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        self.comm = "collective ring" if self.be.device == "/CPU:0" else "collective NCCL"

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Any:
        with self.strategy.scope():  # mirrored variables: the same initial weights on every worker
            return self.be.build(spec, weights)

    def weights(self, model: Any, spec: ModelSpec) -> list[np.ndarray]:
        return self.be.get_weights(model, spec)

    def make_step(self, model: Any, optim: Optim, global_batch: int) -> StepFn:
        import keras
        from pipeline.backends.tensorflow.optim import make_optimizer, scaled_loss
        tf, strategy = self.tf, self.strategy
        with strategy.scope():
            opt = make_optimizer(optim, self.be.loss_scaled)  # fp16: the backend's loss scaling
            opt.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

        def replica(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                logits = tf.cast(model(xb, training=True), tf.float32)  # the loss in float32 at any precision
                loss = loss_fn(yb, logits) / global_batch  # the all-reduced (summed) gradients: the global mean's
                scaled = scaled_loss(opt, loss)
            opt.apply_gradients(zip(tape.gradient(scaled, model.trainable_variables), model.trainable_variables))
            return loss

        @tf.function(reduce_retracing=True)
        def step(xb: Any, yb: Any) -> Any:
            return strategy.run(replica, args=(xb, yb))
        return step

    def allreduce_s(self, model: Any, calls: int) -> float:
        """Seconds per all-reduce of one step's gradients (one flat buffer of every parameter), timed alone."""
        tf = self.tf
        n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        buf = tf.zeros([n])

        @tf.function
        def reduce() -> Any:
            return self.strategy.run(
                lambda: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, buf))
        self.be.sync(reduce())
        self.barrier()
        t0 = time.perf_counter()
        out = None
        for _ in range(calls):
            out = reduce()
        self.be.sync(out)
        return (time.perf_counter() - t0) / calls

    def loss_sum(self, value: Any) -> float:
        return float(self.strategy.reduce(self.tf.distribute.ReduceOp.SUM, value, axis=None))

    def barrier(self) -> None:
        self.loss_sum(self.tf.constant(0.0))  # a collective every worker must reach

    def close(self) -> None:
        pass  # the strategy's collectives end with the process


ENGINE = TFMultiWorker
