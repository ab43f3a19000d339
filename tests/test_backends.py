"""Every backend implements exactly the contract in pipeline/backends/base.py, with the same parameters, and holds
its own state: the device and RNG live on the object, not in its module."""
from __future__ import annotations

import importlib
import inspect
import os

import numpy as np
import pytest

from pipeline import backends, params, spec as specs
from pipeline.backends.base import Backend

ABSTRACT = set(Backend.__abstractmethods__) - {"__init__"}
CONSTANTS = {"NAME", "MODEL_SUFFIX", "DEFAULT", "VARIANTS", "ABSENT", "LAZY_IMPORTS"}


def module_of(framework: str):
    return importlib.import_module(f"pipeline.backends.{framework}.backend")


def own_public(cls: type) -> set[str]:
    """Public names a backend class defines itself (not inherited from the contract)."""
    return {n for n in vars(cls) if not n.startswith("_")}


def shape(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_contract_is_not_empty():
    assert {"build", "make_step", "make_predict", "put", "take", "save", "load", "make_loader"} <= ABSTRACT
    assert {"variants", "batches", "train_timings"} <= {n for n in vars(Backend) if not n.startswith("_")}


@pytest.mark.parametrize("framework", backends.FRAMEWORKS)
def test_backend_implements_exactly_the_contract(framework):
    cls = module_of(framework).BACKEND
    assert issubclass(cls, Backend) and not cls.__abstractmethods__
    shared = {n for n in dir(Backend) if not n.startswith("_") and callable(getattr(Backend, n))} - ABSTRACT
    extra = own_public(cls) - ABSTRACT - CONSTANTS - shared  # an override of a shared method is allowed
    assert not extra, f"{framework} adds {extra} beyond the contract"
    for name in ABSTRACT | {"__init__"} | (own_public(cls) & shared):  # ... with the shared method's signature
        assert shape(getattr(cls, name)) == shape(getattr(Backend, name)), name
    assert cls.NAME == framework and cls.DEFAULT in cls.VARIANTS


@pytest.mark.parametrize("framework", backends.FRAMEWORKS)
def test_every_variant_name_asked_is_measured_or_said_absent_and_the_default_comes_first(framework):
    be = backends.create(framework, 1, "cpu", 0, "fp32")
    assert be.variants([]) == [be.DEFAULT]
    everything = be.variants(list(params.VARIANTS))
    assert everything[0] == be.DEFAULT and set(everything) == set(be.VARIANTS)
    for name in params.VARIANTS:  # each name: exactly one of "this framework's variant" or "absent, and why"
        own = [n for n, v in be.VARIANTS.items() if v.asked_by == name]
        assert len(own) + (name in be.ABSENT) == 1, name
        assert be.variants([name]) == [be.DEFAULT] + own
    assert {v.asked_by for v in be.VARIANTS.values()} - {""} <= set(params.VARIANTS)


def test_a_missing_or_reshaped_method_is_caught():
    class HalfDone(Backend):  # what a half-done fourth backend looks like
        NAME, MODEL_SUFFIX, DEFAULT, VARIANTS = "fake", ".npz", "plain", {}

        def __init__(self, threads, device):  # missing a parameter
            pass
    assert HalfDone.__abstractmethods__  # cannot be created
    with pytest.raises(TypeError):
        HalfDone(1, "cpu")
    assert shape(HalfDone.__init__) != shape(Backend.__init__)


def test_state_lives_on_the_object():
    """Two numpy backends in one process keep their own dropout RNG: no module global shared between them."""
    s = specs.mlp((4, 4, 1), 3, [8], "relu", 0.5)
    x = np.ones((6, 4, 4, 1), np.float32)
    a, b = backends.create("numpy", 1, "cpu", 1, "fp32"), backends.create("numpy", 1, "cpu", 2, "fp32")
    na, nb = a.build(s, specs.init_weights(s, 0)), b.build(s, specs.init_weights(s, 0))
    first = na.forward(x, train=True)
    b.reseed(7)  # reseeding b must not touch a's masks
    nb.forward(x, train=True)
    a.reseed(1)
    assert np.array_equal(na.forward(x, train=True), first)


@pytest.mark.parametrize("framework", backends.FRAMEWORKS)
def test_no_backend_module_holds_state(framework):
    """A module may define constants, classes and functions; anything else would be state shared by every backend
    object of the process (what `_device = ...` globals used to be)."""
    state = [n for n, v in vars(module_of(framework)).items()
             if not n.startswith("__") and not n.isupper() and not inspect.ismodule(v) and not callable(v)
             and n != "annotations"]
    assert not state, f"{framework}_backend module state: {state}"


FIX = {"torch": r"its CPU-only build is installed \(README \"Install\": TORCH_INDEX\)",
       "tensorflow": r"its CUDA libraries are not installed: make venv CUDA=1 \(requirements-cuda\.txt, README "
                     r"\"Install\"\), or pip install 'tensorflow\[and-cuda\]==2\.21\.0'",
       "numpy": "it runs on the CPU only",
       "jax": r"its CPU-only build is installed \(pip install 'jax\[cuda12\]==0\.10\.2'\)"}


@pytest.fixture
def frameworks_see_no_gpu(monkeypatch):
    """What PyTorch's CPU-only build and TensorFlow without its CUDA libraries see, on any machine, a GPU one too
    (where `make test` runs these as well): no GPU, whatever NVML says."""
    import tensorflow as tf
    import torch
    from pipeline.probe import telemetry
    real = tf.config.list_physical_devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [] if kind == "GPU" else real(kind))
    monkeypatch.setattr(telemetry, "driver_cuda", lambda: None)


@pytest.mark.parametrize("framework", backends.FRAMEWORKS)
@pytest.mark.usefixtures("frameworks_see_no_gpu")
def test_device_auto_is_one_device_for_the_whole_run_not_what_each_framework_finds(framework, monkeypatch):
    # NVML sees a GPU, so auto means cuda for every framework: one that sees none (TensorFlow's CPU build beside
    # PyTorch's CUDA one, the default install on a GPU machine) is refused in one line saying how to give it the
    # GPU, never left on the CPU to be compared with the others on the GPU (each used to pick its own device)
    from pipeline.probe import telemetry
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 1)
    refused = (r"^params\.yaml: device: auto is cuda on this machine \(NVML sees a GPU\), but .+ sees no GPU: "
               rf"{FIX[framework]}.*; or set device: cpu$")
    with pytest.raises(params.ParamsError, match=refused):
        backends.create(framework, 1, "auto", 0, "fp32")
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 0)  # no GPU visible: auto is the CPU, for every framework
    assert backends.create(framework, 1, "auto", 0, "fp32").info["device"] == "cpu"
    with pytest.raises(params.ParamsError, match=r"^params\.yaml: device: cuda, but no NVIDIA GPU is visible here "
                                                 r"\(NVML, CUDA_VISIBLE_DEVICES\); set device: cpu or auto$"):
        backends.create(framework, 1, "cuda", 0, "fp32")  # asked for, where there is none: said so, not a fix


@pytest.mark.usefixtures("frameworks_see_no_gpu")
def test_tensorflow_refused_a_gpu_says_whether_its_cuda_libraries_are_missing_or_did_not_load(monkeypatch):
    # the same refusal has two causes on a GPU machine with two fixes: libraries never installed (install them),
    # or installed and not loaded (TensorFlow's own log names the library and why)
    import importlib.metadata
    from pipeline.backends.tensorflow import backend as tfb
    from pipeline.probe import telemetry
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 1)
    real = importlib.metadata.version
    for installed, said in ((False, r"are not installed: make venv CUDA=1"),
                            (True, r"\(requirements-cuda\.txt\) are installed but did not load: "
                                   r"TF_CPP_MIN_LOG_LEVEL=0")):
        def version(name, installed=installed):
            if name.endswith("-cu12"):
                if installed:
                    return "9.28.0.42"
                raise importlib.metadata.PackageNotFoundError(name)
            return real(name)
        monkeypatch.setattr(importlib.metadata, "version", version)
        with pytest.raises(params.ParamsError, match=rf"sees no GPU: its CUDA libraries {said}"):
            tfb.TensorFlowBackend(1, "auto", 0, "fp32")


@pytest.mark.usefixtures("frameworks_see_no_gpu")
def test_a_framework_built_for_a_newer_cuda_than_the_driver_runs_is_told_so(monkeypatch):
    # PyPI's PyTorch 2.13.0 is built for CUDA 13; on a driver for CUDA 12 it finds no GPU, which is not a CPU build
    # nor a missing GPU. A driver runs its own major version's every minor (minor-version compatibility).
    import torch
    from pipeline.backends.tensorflow import backend as tfb
    from pipeline.probe import telemetry
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 1)
    newer = (r"sees no GPU: its build for CUDA {} needs a driver for CUDA {}, and this one runs CUDA 12\.4 at most "
             r"\(nvidia-smi\): update the driver, or install a build for CUDA 12 \(README \"Install\"\); or set "
             r"device: cpu$")
    for built, driver, said in (("13.0", (12, 4), newer.format(r"13\.0", 13)),
                                ("12.8", (12, 4), r"sees no GPU: its CUDA 12\.8 build finds no device; or set"),
                                ("13.0", None, r"sees no GPU: its CUDA 13\.0 build finds no device; or set")):
        monkeypatch.setattr(torch.version, "cuda", built)
        monkeypatch.setattr(telemetry, "driver_cuda", lambda driver=driver: driver)
        with pytest.raises(params.ParamsError, match=said):
            backends.create("torch", 1, "auto", 0, "fp32")
    monkeypatch.setattr(telemetry, "driver_cuda", lambda: (11, 8))  # TensorFlow 2.21's CUDA 12 libraries
    with pytest.raises(params.ParamsError, match=r"TensorFlow sees no GPU: its build for CUDA 12\.\d+\.\d+ needs a "
                                                 r"driver for CUDA 12, and this one runs CUDA 11\.8 at most"):
        tfb.TensorFlowBackend(1, "auto", 0, "fp32")


def test_tensorflow_on_a_gpu_machine_starts_only_the_gpu_pytorch_uses_and_grows_its_memory(monkeypatch):
    # TensorFlow's defaults start every visible GPU and reserve nearly all of their memory; PyTorch starts cuda:0
    # and takes what it allocates. On an 8-GPU machine that is 7 GPUs (and other jobs' memory) taken for nothing.
    import tensorflow as tf
    from pipeline.backends.tensorflow import backend as tfb
    from pipeline.probe import telemetry
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(8)]
    done = []
    monkeypatch.setattr(telemetry, "gpu_count", lambda: 8)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda d, kind=None: done.append(("visible", d, kind)))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda d, on: done.append(("growth", d, on)))
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"device_name": "NVIDIA H200"})
    be = tfb.TensorFlowBackend(1, "auto", 0, "fp32")
    assert be.device == "/GPU:0" and be.info["device"] == "NVIDIA H200"
    assert done == [("visible", gpus[0], "GPU"), ("growth", gpus[0], True)]


def test_both_frameworks_autotune_their_convolutions_as_tensorflow_does_by_default(monkeypatch):
    # PyTorch's default (cudnn.benchmark off: heuristic picks) against TensorFlow's (each algorithm timed once per
    # shape) would set a tuned CNN against an untuned one on a GPU; the environment cannot turn TensorFlow's off
    import torch
    monkeypatch.setenv("TF_CUDNN_USE_AUTOTUNE", "0")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    got = {fw: backends.create(fw, 1, "cpu", 0, "fp32").info["conv_autotune"] for fw in ("torch", "tensorflow")}
    assert got == {"torch": True, "tensorflow": True} and torch.backends.cudnn.benchmark
    assert os.environ["TF_CUDNN_USE_AUTOTUNE"] == "1"


@pytest.mark.parametrize("framework", backends.FRAMEWORKS)
def test_weights_read_back_are_a_snapshot_that_training_leaves_alone(framework):
    # PyTorch's .numpy() of a CPU parameter shares its memory: read back without a copy, a bias "read before"
    # would show the weights after the next update
    be = backends.create(framework, 1, "cpu", 0, "fp32")
    s = specs.mlp((4, 4, 1), 10, [8], "relu", 0.0)
    model = be.build(s, specs.init_weights(s, 0))
    before = be.get_weights(model, s)
    kept = [w.copy() for w in before]
    step = be.make_step(model, specs.Optim("sgd", 0.5, 0.0, 0.9, 0.999, 1e-8), be.DEFAULT)
    rng = np.random.default_rng(0)
    be.sync(step(*be.put(rng.normal(size=(8, 4, 4, 1)).astype(np.float32), np.arange(8)))[0])
    after = be.get_weights(model, s)
    assert all(np.array_equal(b, k) for b, k in zip(before, kept))
    assert any(not np.array_equal(a, k) for a, k in zip(after, kept))  # and the step did change the model
