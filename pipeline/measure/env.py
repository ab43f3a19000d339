"""Fingerprint of the machine and software the benchmarks are measured on.

No timestamps, host names or other run-to-run noise go in: on the same hardware and software the fingerprint comes
out byte-identical (in a container with a random host name too), so DVC re-uses the benchmark results; on other
hardware (CPU family, model, stepping, ISA extensions, caches, GPU and driver) or software (package versions, the
BLAS numpy calls) it differs and the benchmarks are measured again.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from pipeline import backends
from pipeline.probe import telemetry

COMMON = ("numpy", "threadpoolctl", "pandas", "scikit-learn", "dvc")  # what every stage computes with


def packages() -> tuple[str, ...]:
    """The distributions whose versions are fingerprinted: every framework's own (the registry), then COMMON."""
    return tuple(dict.fromkeys([*(d for fw in backends.FRAMEWORKS for d in backends.about(fw).packages), *COMMON]))
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "OPENBLAS_CORETYPE")


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# Instruction-set extensions that change what BLAS, oneDNN and the frameworks' kernels can use.
ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
       "avx512_fp16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve", "sve2")
CPUINFO = ("vendor_id", "cpu family", "model", "stepping")  # the CPU's identity, beyond its marketing name


def cpu_identity() -> dict:
    """Vendor, family, model and stepping, the ISA extensions of ISA present, and the cache sizes per level and
    type: two hosts that print the same "AMD EPYC" can differ in all of these."""
    out: dict = {}
    block = _cpuinfo().split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    out |= {k.replace(" ", "_"): fields[k] for k in CPUINFO if k in fields}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    out["isa"] = [f for f in ISA if f in flags]
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / n).read_text().strip() for n in ("level", "type", "size"))
        except OSError:
            continue
        caches[f"L{level} {kind.lower()}"] = size
    return out | {"caches": caches}


def blas() -> list[str]:
    """The BLAS libraries numpy calls (the calibration GEMM's kernel): name, version, CPU architecture."""
    try:
        importlib.import_module("numpy")  # loads numpy's BLAS, so that threadpoolctl can see it
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return sorted({f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
                   for i in threadpool_info() if i.get("user_api") == "blas"})


def ram_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return float("nan")


def gpus() -> list[str]:
    """Every GPU's name, memory and driver, from NVML, without importing a framework (this stage must stay light)."""
    return [f"{g['name']}, {g['memory_mib']} MiB, driver {g['driver']}" for g in telemetry.devices()]


def oversubscribed(threads: int, cores: int) -> str | None:
    """What a `threads` above the cores this process may use does to every figure, or None: each framework's pool
    time-slices those cores, and the frameworks suffer unequally. On 2 cores (digits, GEMM 191 GFLOP/s) PyTorch's
    MLP trained at 4,400-5,200 samples/s with 64 threads against 31,000-37,000 with 2, TensorFlow's at 11,600
    against 13,600: the comparison turns round."""
    if threads <= cores:
        return None
    return (f"threads: {threads} is more than the {cores} core{'s' * (cores != 1)} this process may use, so every "
            "framework's threads contend for them and each speed figure measures that contention, which the "
            f"frameworks suffer unequally; set threads to {cores} or 0 (all cores) unless that is what you study")


def fingerprint(threads: int, device: str) -> dict:
    versions = {}
    for pkg in packages():
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cores = backends.cpu_threads(0)  # the cores this process may use
    hw = {"cpu": cpu_model(), **cpu_identity(), "machine": platform.machine(), "cores_available": cores,
          "cores_total": os.cpu_count(), "ram_gb": ram_gb(), "gpus": gpus()}
    sw = {"os": platform.platform(), "python": sys.version.split()[0], "versions": versions, "blas": blas()}
    # The name a comparison across machines groups by: MNIST_BENCH_MACHINE (laptop, ci, gpu-box), else one made
    # from the hardware itself, never the host name (random in containers, shared by different hosts elsewhere).
    digest = hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:8]
    name = os.environ.get("MNIST_BENCH_MACHINE") or f"{hw['cpu'].split()[0].lower()}-{cores}c-{digest}"
    return {"machine_name": name, "hardware_sha256_8": digest, **hw, **sw, "threads_param": threads,
            "threads_used": backends.cpu_threads(threads), "device_param": device,
            # which of the machine's GPUs the run computes on (CUDA_VISIBLE_DEVICES' first), not just that it has some
            "gpu_used": telemetry.used_name() if telemetry.gpu_used(device) else None,
            "gpu_unseen": telemetry.unseen_gpus() if device == "auto" else None,
            "oversubscribed": oversubscribed(threads, cores),
            "thread_env": {k: os.environ.get(k) for k in THREAD_VARS if os.environ.get(k) is not None}}
