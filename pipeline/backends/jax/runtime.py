"""XLA's client: threads set before it starts and counted after; dispatch; GPU facts.

Threads. jaxlib's CPU client (PjRt's TFRT CPU client) reads no XLA flag for its pool: the old recipe,
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" (jax-ml/jax#743, #1539), changes
nothing in jaxlib 0.10 (measured: the same pool, the same threads doing the work). The client sizes its intra-op
Eigen pool, "XLAEigen" (a thread's name: tf_XLAEigen), from the environment variable PJRT_NPROC (else NPROC, else
the cores this process may use), read once, when the client is made. A program's operations (fusions, YNNPACK's
matmuls and convolutions) run on the calling thread and on that pool, the caller handing them over and waiting: at
one thread the process computes on one core at a time (CPU time never above wall time, and the same step time as
under `taskset -c 0`). So the backend sets PJRT_NPROC for the moment the client starts (and restores the
environment, so a process this one starts later inherits nothing), then counts the pool's threads by name in
/proc/self/task: the number the bench checks is the pool that exists, not the number asked for. Off Linux there is
nothing to count, and check_threads refuses the unknown count. (On a GPU, untested here: a GPU client may hold an
XLAEigen pool of its own, which the count would include, and check_threads would refuse that too.)

Inter-op. XLA has no inter-op pool: independent operations of a program share the intra-op pool. What it has is
asynchronous CPU dispatch (jax_cpu_enable_async_dispatch, on by default): a program then runs on a client worker
thread while Python goes on to queue the next, so `threads: 1` computes on one core and runs Python on another,
where PyTorch and TensorFlow use one for both (measured: a small MLP's step 1.5 to 2 times faster that way, on two
cores). Off, each call returns when its program has run, as the other frameworks' CPU ops do. The flag is read when
the client is made, so it is set before, and read back after (tests/test_jax.py measures which threads worked).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax._src import xla_bridge  # backends_are_initialized: jax has no public way to ask

POOL = "tf_XLAEigen"  # the CPU client's intra-op pool, as tsl names its threads ("tf_" + "XLAEigen")
PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin")  # JAX's CUDA builds, by the CUDA major version they need


def cuda_build() -> str | None:
    """The CUDA major version of the JAX CUDA plugin installed beside jaxlib ("12" for jax-cuda12-plugin), None
    where only the CPU build is (pip install jax)."""
    for name in PLUGINS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version(name)
            return name.split("-")[1].removeprefix("cuda")
    return None


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block, the environment as it was after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start(platform: str, threads: int) -> jax.Device:
    """The device this process computes on (`platform`: cpu or cuda), XLA's clients started here with `threads`
    intra-op threads and synchronous CPU dispatch. Where a backend already started them in this process (tests make
    several backend objects), their settings stay: what the backend reports is then read back from them."""
    if not xla_bridge.backends_are_initialized():
        # cuda: the CPU client too (host-side arrays, the loader's staging); cpu: not even a look for a GPU plugin
        jax.config.update("jax_platforms", "cuda,cpu" if platform == "cuda" else "cpu")
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        env = {"PJRT_NPROC": str(threads)} if threads else {}
        if platform == "cuda":
            # JAX reserves 75% of the GPU's memory at start; PyTorch takes what it allocates, and TensorFlow grows
            # (its backend): allocating on demand keeps NVML's memory in use comparable between them
            env |= {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        with environ(env):
            devices = jax.devices(platform)
    else:
        devices = jax.devices(platform)
    jax.block_until_ready(jax.jit(lambda a: a + 1)(jnp.zeros(8)))  # a program run: every pool exists now
    return devices[0]


def pool_threads() -> int | None:
    """Threads of XLA's CPU intra-op pool in this process, counted by name (None off Linux: no /proc to read)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    n = 0
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):  # a thread that ended while being read
            n += (task / "comm").read_text().strip() == POOL
    return n


def dispatch_threads() -> int:
    """1 where each program runs on the thread that called it (synchronous CPU dispatch, what start() sets); 2
    where a client worker runs it beside the caller's Python (asynchronous, jax's default)."""
    return 2 if jax.config.values["jax_cpu_enable_async_dispatch"] else 1


def capability(device: Any) -> tuple[int, int] | None:
    """A CUDA device's compute capability, (9, 0) for an H100; None for a CPU device."""
    cc = getattr(device, "compute_capability", None)
    return tuple(int(v) for v in str(cc).split(".")[:2]) if cc else None


def memory_stats(device: Any) -> dict:
    """The device allocator's statistics (bytes_in_use, peak_bytes_in_use, ...); {} where it keeps none (a CPU)."""
    return device.memory_stats() or {}
