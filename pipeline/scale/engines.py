"""Each framework's own data-parallel engine as an object: PyTorch DDP, tf.distribute MWMS.

One engine is made once per worker process. It holds the framework backend (threads, device, seed), the process
group or strategy, and the rank; nothing lives in module globals. Both engines do the same maths: every worker
holds the same initial weights, computes the loss of its shard of the global batch summed and divided by the
*global* batch size, and the gradients are summed across workers, so N workers take the step one worker takes on
the whole batch (tests/test_scale.py checks it). Neither engine is written here: DDP (gloo on CPU, NCCL on GPUs)
and MultiWorkerMirroredStrategy (collective ring all-reduce) do the communication.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import numpy as np

from pipeline.spec import ModelSpec, Optim

StepFn = Callable[[Any, Any], Any]  # step(x_shard, y_shard) -> this worker's loss share (unsynchronised)


class TorchDDP:
    """torchrun starts the workers (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment); DDP all-reduces the
    gradients in buckets, overlapped with the backward pass."""
    NAME = "torch"

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        import torch.distributed as dist
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        from pipeline.backends.torch_backend import BACKEND
        self.be = BACKEND(threads, device, seed, precision)
        if self.be.device.type == "cuda":  # one device per worker
            import torch
            torch.cuda.set_device(local)
            self.be.device = torch.device("cuda", local)
        self.comm = "nccl" if self.be.device.type == "cuda" else "gloo"
        dist.init_process_group(self.comm)
        self.dist = dist

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> Any:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = self.be.build(spec, weights)  # DDP broadcasts rank 0's weights too; every rank starts from the same
        return DDP(net, device_ids=[self.be.device.index] if self.be.device.type == "cuda" else None)

    def weights(self, model: Any, spec: ModelSpec) -> list[np.ndarray]:
        return self.be.get_weights(model.module, spec)

    def make_step(self, model: Any, optim: Optim, global_batch: int) -> StepFn:
        """The backend's own training step (its optimizer, precision and loss) on the DDP-wrapped model: DDP
        averages the gradients over workers during backward(), and with equal shards the mean of the shard means
        is the global batch's mean (the shards' equal size is checked where they are cut)."""
        step = self.be.make_step(model, optim, self.be.DEFAULT)
        return lambda xb, yb: step(xb, yb)[0] / global_batch  # this shard's summed loss: a share of the mean

    def allreduce_s(self, model: Any, calls: int) -> float:
        """Seconds per all-reduce of one step's gradients (one flat buffer of every parameter), timed alone."""
        import torch
        buf = torch.zeros(sum(p.numel() for p in model.parameters()), device=self.be.device)
        self.dist.all_reduce(buf)
        self.barrier()
        t0 = time.perf_counter()
        for _ in range(calls):
            self.dist.all_reduce(buf)
        self.be.sync()
        return (time.perf_counter() - t0) / calls

    def loss_sum(self, value: Any) -> float:
        """The global batch's mean loss from every worker's share."""
        t = value.clone()
        self.dist.all_reduce(t)
        return float(t)

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        self.dist.destroy_process_group()


class TFMultiWorker:
    """MultiWorkerMirroredStrategy: each worker process reads its place in the cluster from TF_CONFIG (absent for a
    single worker); the Keras optimizer all-reduces (sums) the gradients inside strategy.run."""
    NAME = "tensorflow"

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        from pipeline.backends.tensorflow_backend import BACKEND
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
        from pipeline.backends.tensorflow_backend import make_optimizer, scaled_loss
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


ENGINES = {"torch": TorchDDP, "tensorflow": TFMultiWorker}  # NumPy has no data-parallel engine to measure
