"""The speedometer: the CPU GEMM everywhere on a CPU, a device matmul on a GPU, and NVML telemetry only where
there is a driver (NaN, never made up, elsewhere)."""
import json
import math
import sys
import types

import pytest

from pipeline import backends
from pipeline.measure import env
from pipeline.probe import speedo, telemetry
from tests.conftest import write_params


def test_burst_rate_counts_flops_per_second_and_syncs_every_call():
    synced = []
    clock = iter(range(10**6))

    def call():
        return next(clock)
    rate = speedo.burst_rate(call, flops=2e9, sync=synced.append, seconds=0.05)
    assert rate > 0 and len(synced) >= 4  # the untimed first call, then every timed one waited for
    assert synced == sorted(synced) and synced[0] == 0


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "numpy"])
def test_on_a_cpu_every_backend_uses_the_same_numpy_gemm(framework, monkeypatch):
    be = backends.create(framework, 1, "cpu", 0, "fp32")
    assert be.speedometer() == speedo.DESCRIPTION == "NumPy fp32 GEMM 512x512 on the CPU"
    asked = []
    monkeypatch.setattr(speedo, "gemm_gflops", lambda threads, seconds=speedo.SECONDS: asked.append(threads) or 123.0)
    assert be.calibrate(3) == 123.0 and asked == [3]  # the shared kernel, on the threads asked for


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
def test_between_repeats_a_framework_reads_its_own_matmul_not_numpys(framework, monkeypatch):
    # NumPy's BLAS keeps its threads spinning for a while after each call: read between two repeats, it slowed
    # PyTorch's next repeat 2-3x on two cores. A framework's own matmul shares the framework's own thread pool.
    be = backends.create(framework, 2, "cpu", 0, "fp32")
    monkeypatch.setattr(speedo, "gemm_gflops", lambda *a, **k: pytest.fail("NumPy's GEMM read between repeats"))
    assert be.reading(2) > 1.0  # GFLOP/s of its own 512 x 512 matmul


def test_telemetry_without_a_driver_is_nan_not_invented(monkeypatch):
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: (_ for _ in ()).throw(OSError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    got = telemetry.read()
    assert set(got) == set(telemetry.FIELDS) and all(math.isnan(v) for v in got.values())


def test_telemetry_reads_nvml_in_the_units_it_names(monkeypatch):
    fake = types.ModuleType("pynvml")
    calls = []
    fake.NVML_CLOCK_SM, fake.NVML_TEMPERATURE_GPU = 1, 0
    fake.nvmlInit, fake.nvmlShutdown = (lambda: calls.append("init")), (lambda: calls.append("shutdown"))
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    fake.nvmlDeviceGetClockInfo = lambda h, kind: 1755 if kind == 1 else 0
    fake.nvmlDeviceGetTemperature = lambda h, kind: 61
    fake.nvmlDeviceGetPowerUsage = lambda h: 312_500  # milliwatts
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * 2**30)
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: ["this child", "another job"]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert telemetry.read() == {"sm_clock_mhz": 1755.0, "temperature_c": 61.0, "power_w": 312.5,
                                 "memory_used_mb": 3072.0, "processes": 2.0}
    assert calls == ["init", "shutdown"]
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: []  # NVML sees no process, not even this one: unknown
    assert math.isnan(telemetry.read()["processes"])


def fake_nvml(uuids: list[str]) -> types.ModuleType:
    """NVML over GPUs in PCI bus order: GPU i has the UUID uuids[i] and an SM clock of 1000 + i MHz; its power reads
    are not supported (as on some boards)."""
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass
    fake.NVMLError, fake.NVML_CLOCK_SM, fake.NVML_TEMPERATURE_GPU = NVMLError, 1, 0
    fake.nvmlInit, fake.nvmlShutdown, fake.nvmlDeviceGetCount = (lambda: None), (lambda: None), (lambda: len(uuids))

    def by_index(i):
        if not 0 <= i < len(uuids):
            raise NVMLError("Invalid Argument")
        return i
    fake.nvmlDeviceGetHandleByIndex = by_index
    fake.nvmlDeviceGetHandleByUUID = lambda u: f"slice of {u}"
    fake.nvmlDeviceGetUUID = lambda h: uuids[h].encode()  # bytes, as older bindings return
    fake.nvmlDeviceGetName = lambda h: f"GPU model {h}"
    fake.nvmlDeviceGetClockInfo = lambda h, kind: 1000 + h if isinstance(h, int) else fake_unsupported()
    fake.nvmlDeviceGetTemperature = lambda h, kind: 50
    fake.nvmlDeviceGetPowerUsage = lambda h: fake_unsupported()
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**30, total=80 * 2**30)
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: [h]
    fake.nvmlSystemGetDriverVersion = lambda: b"580.159.04"
    fake.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)

    def fake_unsupported():
        raise NVMLError("Not Supported")
    return fake


@pytest.mark.parametrize("visible, clock", [(None, 1000), ("3,1", 1003), ("GPU-cc", 1002), ("GPU-dd9f,GPU-aa", 1003),
                                            ("GPU-", None), ("GPU-ff", None), ("9", None), ("", None), ("-1", None)])
def test_telemetry_reads_the_gpu_the_process_computes_on_not_nvmls_first(monkeypatch, visible, clock):
    # NVML numbers GPUs in PCI bus order whatever CUDA_VISIBLE_DEVICES says: on a shared machine where this run
    # was given GPU 3, NVML's GPU 0 is someone else's job, and its clock and temperature would be read as ours.
    # An ambiguous or unknown UUID, an index past the last GPU, a list that hides every GPU: nothing is read.
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(["GPU-aa1", "GPU-bb2", "GPU-cc3", "GPU-dd9f"]))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    got = telemetry.read()
    if clock is None:
        assert all(math.isnan(v) for v in got.values()) and telemetry.used_name() is None
        return
    # a figure the board does not report (power here) is NaN; the others are still read
    assert got["sm_clock_mhz"] == clock and got["temperature_c"] == 50 and math.isnan(got["power_w"])
    uuid = ["GPU-aa1", "GPU-bb2", "GPU-cc3", "GPU-dd9f"][clock - 1000]
    assert telemetry.used_name() == f"GPU model {clock - 1000} ({uuid})"
    # the env stage records it beside the machine's list of GPUs (NVML's, no nvidia-smi), for a run on the GPU only
    assert env.fingerprint(1, "cuda")["gpu_used"] == telemetry.used_name()
    assert env.fingerprint(1, "cpu")["gpu_used"] is None
    assert env.fingerprint(1, "cpu")["gpus"] == [f"GPU model {i}, 81920 MiB, driver 580.159.04" for i in range(4)]
    assert telemetry.used_device() == (f"GPU model {clock - 1000}", (9, 0))  # what gpu-check surveys


def test_telemetry_of_a_mig_slice_reads_what_the_slice_reports(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(["GPU-aa1"]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5c1e")
    got = telemetry.read()  # its memory; clocks and power belong to the whole GPU and are not reported for a slice
    assert got["memory_used_mb"] == 1024 and math.isnan(got["sm_clock_mhz"]) and math.isnan(got["power_w"])


def test_a_gpu_given_to_the_process_that_nvml_cannot_reach_is_said_not_silently_the_cpu(monkeypatch, tmp_path, caplog):
    # in a container given the GPUs without the driver's NVML library (or with one of another version) NVML cannot
    # start, so `device: auto` is the CPU on a GPU machine: the env stage says so once, and env.json keeps it
    from pipeline.stages import env as stage
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()  # the driver's control file: there on a GPU host, a GPU only with nvidia0 and on
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: (_ for _ in ()).throw(OSError("libnvidia-ml.so.1: cannot open shared object file"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert telemetry.unseen_gpus(str(dev)) is None  # no GPU given to this process: a CPU machine, nothing to say
    (dev / "nvidia0").touch()
    said = telemetry.unseen_gpus(str(dev))
    assert said.startswith(f"this process may use 1 NVIDIA GPU(s) ({dev}/nvidia0) but NVML cannot start (libnvidia-ml")
    assert said.endswith("device: auto is the CPU. Fix the driver's NVML library (nvidia-smi fails too), or set "
                         "device: cuda")
    assert telemetry.unseen_gpus(str(tmp_path / "absent")) is None
    fake.nvmlInit, fake.nvmlShutdown = (lambda: None), (lambda: None)
    assert telemetry.unseen_gpus(str(dev)) is None  # NVML starts: auto decides by it, nothing unseen
    fake.nvmlInit = lambda: (_ for _ in ()).throw(OSError("libnvidia-ml.so.1: cannot open shared object file"))
    monkeypatch.setattr(telemetry, "unseen_gpus", lambda: said)  # this machine has no /dev/nvidia0
    monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid: {0, 1})  # params.yaml's 2 threads fit
    out = tmp_path / "env.json"
    stage.main(["--out", str(out)])  # params.yaml's device: auto
    assert json.loads(out.read_text())["gpu_unseen"] == said
    assert [(r.name, r.levelname, r.message) for r in caplog.records] == [("env", "WARNING", said)]


def test_more_threads_than_cores_are_warned_of_once_and_kept_in_env_json(monkeypatch, tmp_path, caplog):
    # PyTorch's MLP ran 6-8x slower at 64 threads on 2 cores, TensorFlow's 15%: the comparison turns round
    from pipeline.stages import env as stage
    monkeypatch.setattr(telemetry, "unseen_gpus", lambda: None)
    monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid: {0, 1, 2})  # 3 cores for this process
    out, said = tmp_path / "env.json", {}
    for threads in (4, 3, 0):
        caplog.clear()
        stage.main(["--out", str(out), "--params", str(write_params(tmp_path / "params.yaml", threads=threads))])
        said[threads] = json.loads(out.read_text())["oversubscribed"]
        assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [said[threads]] * bool(said[threads])
    assert said[4].startswith("threads: 4 is more than the 3 cores this process may use,")
    assert said[4].endswith("set threads to 3 or 0 (all cores) unless that is what you study")
    assert said[3] is None and said[0] is None  # as many threads as cores, or all of them: nothing to say
    assert env.oversubscribed(2, 1).startswith("threads: 2 is more than the 1 core this")


def test_the_drivers_cuda_version_is_read_as_nvidia_smi_shows_it(monkeypatch):
    fake = fake_nvml(["GPU-aa1"])
    fake.nvmlSystemGetCudaDriverVersion = lambda: 12040
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert telemetry.driver_cuda() == (12, 4)
    fake.nvmlInit = lambda: (_ for _ in ()).throw(OSError("NVML Shared Library Not Found"))
    assert telemetry.driver_cuda() is None


def test_the_gpus_a_process_may_use_follow_cuda_visible_devices(monkeypatch):
    fake = types.ModuleType("pynvml")
    fake.nvmlInit, fake.nvmlShutdown, fake.nvmlDeviceGetCount = (lambda: None), (lambda: None), (lambda: 8)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert telemetry.gpu_count() == 8  # NVML's count when nothing narrows it
    for visible, n in (("2,3", 2), ("", 0), ("-1", 0), ("0,1,2,3,4,5,6,7,8,9", 8)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert telemetry.gpu_count() == n, visible
    fake.nvmlInit = lambda: (_ for _ in ()).throw(OSError("NVML Shared Library Not Found"))
    assert telemetry.gpu_count() == 0  # no driver: no GPU to give a worker
