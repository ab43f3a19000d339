"""GPU telemetry around each benchmark child (NVML): SM clock, temperature, power, memory.

Read before and after a child on a CUDA device, so a child whose GPU throttled (clock down, temperature up) can be
told from one whose framework was slow. Without an NVIDIA driver (a CPU machine) NVML cannot start and every figure
is absent (NaN), never made up.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Any, Callable, Iterator

FIELDS = ("sm_clock_mhz", "temperature_c", "power_w", "memory_used_mb", "processes")


def read() -> dict[str, float]:
    """The figures of the GPU this process computes on (used_handle), or NaN for each when NVML is not there (no
    driver, no GPU) or that GPU is not found; NaN for one the device does not report (power on some boards, clocks
    of a MIG slice)."""
    with nvml() as pynvml:
        h = used_handle(pynvml) if pynvml else None
        if h is None:
            return {k: math.nan for k in FIELDS}
        return {k: _figure(pynvml, fn) for k, fn in (
            ("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
            ("temperature_c", lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
            ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),  # NVML reports milliwatts
            ("memory_used_mb", lambda: pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20),
            # compute processes on it, this one included once it computes: more is a shared GPU. None seen means
            # NVML cannot see them (a container's own process numbers): unknown, not zero
            ("processes", lambda: len(pynvml.nvmlDeviceGetComputeRunningProcesses(h)) or math.nan))}


@contextlib.contextmanager
def nvml() -> Iterator[Any]:
    """NVML started for the block: its module, or None where it cannot start (no library, no driver: a CPU
    machine, whose figures are then absent, never made up)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001  # whatever the binding raises without its library or driver
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def _figure(pynvml: Any, fn: Callable[[], float]) -> float:
    try:
        return float(fn())
    except pynvml.NVMLError:  # not supported by this device: absent, never made up
        return math.nan


def used_handle(pynvml: Any) -> Any | None:
    """NVML's handle of the GPU this process's frameworks call cuda:0: the first entry of CUDA_VISIBLE_DEVICES (an
    index, or a GPU-/MIG- UUID or a unique prefix of one, as CUDA reads it), else NVML's first; None where that
    list hides every GPU or names none NVML knows. NVML ignores CUDA_VISIBLE_DEVICES and numbers the GPUs in PCI
    bus order, so its index 0 on a shared machine is often another job's GPU. An index is NVML's where CUDA's order
    is too: CUDA_DEVICE_ORDER=PCI_BUS_ID, or GPUs all of one model (CUDA puts the fastest first)."""
    visible = visible_devices()
    first = "0" if visible is None else next(iter(visible), None)
    if first is None:
        return None
    try:
        if first.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(first))
        if first.startswith("MIG-"):
            return pynvml.nvmlDeviceGetHandleByUUID(first)
        matches = [h for h in map(pynvml.nvmlDeviceGetHandleByIndex, range(pynvml.nvmlDeviceGetCount()))
                   if _text(pynvml.nvmlDeviceGetUUID(h)).startswith(first)]
    except pynvml.NVMLError:  # an index past the last GPU, an unknown UUID: nothing to attribute
        return None
    return matches[0] if len(matches) == 1 else None


def used_name() -> str | None:
    """The name and UUID of the GPU this process computes on (used_handle), None without one."""
    with nvml() as pynvml:
        h = used_handle(pynvml) if pynvml else None
        if h is None:
            return None
        try:
            return f"{_text(pynvml.nvmlDeviceGetName(h))} ({_text(pynvml.nvmlDeviceGetUUID(h))})"
        except pynvml.NVMLError:
            return None


def devices() -> list[dict]:
    """Every GPU NVML sees: name, memory (MiB), driver version, compute capability; [] without a driver."""
    out = []
    with nvml() as pynvml:
        for i in range(pynvml.nvmlDeviceGetCount() if pynvml else 0):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            out.append({"name": _text(pynvml.nvmlDeviceGetName(h)),
                        "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                        "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
                        "capability": tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))})
    return out


def used_device() -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of the GPU this process computes on (used_handle), None without one."""
    with nvml() as pynvml:
        h = used_handle(pynvml) if pynvml else None
        if h is None:
            return None
        return _text(pynvml.nvmlDeviceGetName(h)), tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v  # older bindings return bytes


def gpu_count() -> int:
    """NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES' list where it is set, else NVML's count; 0 without
    a driver. Read without importing a framework (the scale stage plans before any worker starts)."""
    visible = visible_devices()
    with nvml() as pynvml:
        n = pynvml.nvmlDeviceGetCount() if pynvml else 0
    return n if visible is None else min(n, len(visible))


def driver_cuda() -> tuple[int, int] | None:
    """The newest CUDA (major, minor) the NVIDIA driver runs (nvidia-smi's "CUDA Version"), None without NVML: what
    a framework's CUDA build must not exceed."""
    with nvml() as pynvml:
        try:
            v = pynvml.nvmlSystemGetCudaDriverVersion() if pynvml else None  # 12040 for 12.4
        except pynvml.NVMLError:
            v = None
    return None if v is None else (v // 1000, v % 1000 // 10)


def unseen_gpus(dev: str = "/dev") -> str | None:
    """Why `device: auto` is the CPU where this process was given NVIDIA GPUs (their device files, /dev/nvidia0 and
    on), when the reason is that NVML cannot start (a container given the GPUs without the driver's NVML library, a
    driver and library of different versions); None where NVML starts or no GPU was given. Device files, not the
    driver's /proc listing, which a container without GPU access still sees. Said once per run by the env stage:
    the run is then measured on the CPU, and a GPU owner should know it before reading a figure."""
    try:
        given = sorted(n for n in os.listdir(dev) if re.fullmatch(r"nvidia\d+", n))
    except OSError:
        return None
    if not given:
        return None
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001  # exactly the case to report, whatever NVML raised
        return (f"this process may use {len(given)} NVIDIA GPU(s) ({dev}/{given[0]}) but NVML cannot start ({e}); "
                "device: auto is the CPU. Fix the driver's NVML library (nvidia-smi fails too), or set device: cuda")
    pynvml.nvmlShutdown()
    return None


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
