"""The install path the README promises: pinned requirements that cannot pull CUDA, and the PyTorch build chosen
by one Make variable."""
import re
import subprocess

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
