"""GPU telemetry around each benchmark child (NVML): SM clock, temperature, power, memory.

Read before and after a child on a CUDA device, so a child whose GPU throttled (clock down, temperature up) can be
told from one whose framework was slow. Without an NVIDIA driver (a CPU machine) NVML cannot start and every figure
is absent (NaN), never made up.
"""
from __future__ import annotations

import math
import os

FIELDS = ("sm_clock_mhz", "temperature_c", "power_w", "memory_used_mb")


def read(index: int = 0) -> dict[str, float]:
    """The device's figures now, or NaN for each when NVML is not there (no driver, no GPU)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001  # no library, no driver: no telemetry on this machine, said by NaN
        return {k: math.nan for k in FIELDS}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        return {"sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                "temperature_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,  # NVML reports milliwatts
                "memory_used_mb": pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20}
    finally:
        pynvml.nvmlShutdown()


def gpu_count() -> int:
    """NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES' list where it is set, else NVML's count; 0 without
    a driver. Read without importing a framework (the scale stage plans before any worker starts)."""
    visible = visible_devices()
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001  # no library, no driver: no GPU to use
        return 0
    try:
        n = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    return n if visible is None else min(n, len(visible))


def visible_devices() -> list[str] | None:
    """The device ids CUDA_VISIBLE_DEVICES lists (empty: it hides every GPU), or None when it is not set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if visible is None else [d.strip() for d in visible.split(",") if d.strip() not in ("", "-1")]


def gpu_used(device: str | None, gpus: int | None = None) -> bool:
    """Whether a run with params.yaml's `device` uses a GPU: `cuda` always; `auto` where one is visible (`gpus`, when
    the caller counted them already; else gpu_count)."""
    return device == "cuda" or (device == "auto" and (gpu_count() if gpus is None else gpus) > 0)


def run_device(device: str) -> str:
    """The device every framework of a run uses: `cuda` or `cpu` as asked, `auto` resolved here by NVML (cuda where
    a GPU is visible), the same in every process. Never by what each framework finds: PyTorch's CUDA build beside
    TensorFlow's CPU-only one would put one framework on the GPU and the other on the CPU, and call that a
    comparison."""
    return "cuda" if gpu_used(device) else "cpu"
