"""The install path the README promises: pinned requirements that cannot pull CUDA, and the PyTorch build chosen
by one Make variable."""
import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_requirement_is_pinned_and_none_is_a_cuda_package():
    reqs = requirements()
    assert reqs and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9_.+\-]*", r) for r in reqs), reqs
    names = {r.split("==")[0].lower() for r in reqs}
    # the CPU path stays CPU-only; nvidia-ml-py is NVML's pure-Python binding (GPU telemetry), no CUDA library
    assert not {n for n in names if n.startswith(("nvidia-", "triton", "cuda"))} - {"nvidia-ml-py"}
    assert "torch==2.13.0" in reqs and "tensorflow==2.21.0" in reqs and "mlxtend==0.25.0" in reqs


def make_n(*args: str) -> str:
    return subprocess.run(["make", "-n", "-B", "venv", "VENV=/nonexistent/venv", *args], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_torch_index_picks_the_pytorch_build_and_nothing_else_changes():
    cpu = "https://download.pytorch.org/whl/cpu"
    with_index, plain = make_n(f"TORCH_INDEX={cpu}"), make_n()
    assert f"--extra-index-url {cpu} -r requirements.txt" in " ".join(with_index.split())
    assert "--extra-index-url" not in plain and "-r requirements.txt" in plain
    readme = (ROOT / "README.md").read_text()
    assert f"make repro TORCH_INDEX={cpu}" in readme and "TORCH_INDEX=https://download.pytorch.org/whl/cu" in readme


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    return dict(line.strip().split("==") for line in lines if line.strip() and not line.startswith("#"))


def test_cuda_requirements_pin_exactly_what_tensorflow_asks_for_its_gpu_build():
    # requirements-cuda.txt stands for `tensorflow[and-cuda]` at the pinned TensorFlow: every library that extra
    # names, at a version it accepts, and nothing else (PyTorch's CUDA build brings its own)
    import importlib.metadata
    from packaging.requirements import Requirement
    assert importlib.metadata.version("tensorflow") == pins("requirements.txt")["tensorflow"]
    extra = [Requirement(r) for r in importlib.metadata.requires("tensorflow")
             if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": "and-cuda"})
             and not Requirement(r).marker.evaluate({"extra": ""})]
    cuda = pins("requirements-cuda.txt")
    assert extra and {r.name for r in extra} == set(cuda)
    assert all(r.specifier.contains(cuda[r.name]) for r in extra), cuda
    assert not set(cuda) & set(pins("requirements.txt"))


def test_make_adds_tensorflows_cuda_libraries_where_the_driver_lists_a_gpu(tmp_path):
    # `device: auto` picks the GPU where NVML lists one, for every framework; the install follows the same driver
    # (nvidia-smi -L), so TensorFlow is not the one framework left without it. CUDA=0/1 overrides the detection.
    smi = tmp_path / "nvidia-smi"
    env = os.environ | {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    installs = {}
    for driver, says in (("gpu", "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'"),
                         ("none", "echo 'NVIDIA-SMI has failed: no driver'; exit 9")):
        smi.write_text(f"#!/bin/sh\n{says}\n")
        smi.chmod(0o755)
        for cuda in ((), ("CUDA=0",), ("CUDA=1",)):
            out = subprocess.run(["make", "-n", "-B", "venv", "VENV=/nonexistent/venv", *cuda], cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=True).stdout
            installs[driver, cuda] = ("-r requirements-cuda.txt" in out, "/nonexistent/venv/.installed-cuda" in out)
    both, cpu = (True, True), (False, False)
    assert installs == {("gpu", ()): both, ("gpu", ("CUDA=0",)): cpu, ("gpu", ("CUDA=1",)): both,
                        ("none", ()): cpu, ("none", ("CUDA=0",)): cpu, ("none", ("CUDA=1",)): both}


def test_a_stage_run_by_a_python_without_the_projects_packages_says_which_and_how_to_fix_it_in_one_line(tmp_path):
    # `.venv/bin/dvc repro` from a shell that has not activated the venv runs `python`, the system's
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    py = bare / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pipeline.stages.env", "--out", str(tmp_path / "env.json")], cwd=ROOT,
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    version = subprocess.run([str(py), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {py} (Python {version}) runs this stage, and it lacks the project's packages "
                               "(no module named 'numpy'): ")
    assert ("run `make repro`" in r.stderr) and not (tmp_path / "env.json").exists()
