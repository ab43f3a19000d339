"""JAX (flax.linen + optax): one jax.jit-compiled train step; no data-parallel engine.

No data-parallel engine (`engine` empty, so the scale stage skips JAX): jax.distributed wants its own coordinator
address, process count and id per process, and on a CPU its collectives go through gloo or MPI, set through
jax_cpu_collectives_implementation before the backend starts. The scale stage's launcher gives its other
frameworks' workers a torchrun or TF_CONFIG world, not that; an engine would have to rebuild one from the other,
and would be measured on a path no JAX user takes.

Forking: importing jax, flax and optax starts no thread and no XLA client (the client, its thread pools and jax's
own at-fork warning come with the first computation or `jax.devices()`), so a bench child forked from a zygote that
imported them starts XLA fresh, after the fork, on the threads it asks for (tests/test_jax.py runs one). Where a GPU
is visible its children still start from nothing: the CUDA plugin is loaded only when the backend starts, but a
forked child on a GPU has never been run here (no JAX CUDA build is installed), so it is not claimed.
"""
from pipeline.backends import Framework

FRAMEWORK = Framework(
    name="jax", label="JAX", short="jax", module="jax", packages=("jax", "jaxlib", "flax", "optax"),
    loader="a thread pool of per-sample NumPy workers, batches prefetched to the device (jax.device_put)",
    forks_on_gpu=False)
