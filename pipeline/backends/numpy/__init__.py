"""NumPy, the by-hand reference: forward and backward passes written out, on the CPU only."""
from pipeline.backends import Framework

FRAMEWORK = Framework(
    name="numpy", label="NumPy", short="np", module="numpy", packages=("numpy", "threadpoolctl"),
    loader="a thread pool of per-sample workers")
