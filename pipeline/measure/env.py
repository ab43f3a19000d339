"""Fingerprint of the machine and software the benchmarks are measured on.

No timestamps or other run-to-run noise go in: on the same machine the fingerprint comes out byte-identical, so
DVC re-uses the benchmark results; on another machine it differs and the benchmarks are measured again.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "tensorflow", "keras", "numpy", "threadpoolctl", "pandas", "scikit-learn", "dvc")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "OPENBLAS_CORETYPE")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return float("nan")


def gpus() -> list[str]:
    """GPU names from nvidia-smi, without importing a framework (this stage must stay light)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def fingerprint(threads: int, device: str) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The name a comparison across machines groups by: set MNIST_BENCH_MACHINE (laptop, ci, gpu-box), else the host.
    return {"machine_name": os.environ.get("MNIST_BENCH_MACHINE") or platform.node(), "cpu": cpu_model(),
            "machine": platform.machine(), "cores_available": cores, "cores_total": os.cpu_count(),
            "ram_gb": ram_gb(), "gpus": gpus(), "os": platform.platform(),
            "python": sys.version.split()[0], "versions": versions, "threads_param": threads,
            "threads_used": threads or cores, "device_param": device,
            "thread_env": {k: os.environ.get(k) for k in THREAD_VARS if os.environ.get(k) is not None}}
