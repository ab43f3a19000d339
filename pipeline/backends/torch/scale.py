"""PyTorch's data-parallel engine: DistributedDataParallel in processes torchrun starts."""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import numpy as np

from pipeline.backends.engine import Engine, Launch, StepFn, worker_command
from pipeline.spec import ModelSpec, Optim


class TorchDDP(Engine):
    """torchrun starts the workers (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment); DDP all-reduces the
    gradients in buckets, overlapped with the backward pass."""

    @staticmethod
    def commands(workers: int, host: str, port: int, worker_args: list[str]) -> Launch:
        """One torchrun, its c10d rendezvous on host:port, starting every worker."""
        return [([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(workers),
                  "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{host}:{port}", "--max-restarts", "0",
                  "--monitor-interval", "0.1", *worker_command(worker_args)[1:]], {})]

    @staticmethod
    def failed(log: str) -> tuple[str, int] | None:
        """(rank, exit code) of the first failure torchrun reports in its summary."""
        m = re.search(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", log.split("Root Cause")[-1], re.S)
        return (m.group(1), int(m.group(2))) if m else None

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        import torch.distributed as dist
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        from pipeline.backends.torch.backend import BACKEND
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


ENGINE = TorchDDP
