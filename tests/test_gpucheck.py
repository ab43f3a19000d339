"""make gpu-check's logic, run on the CPU (--cpu): its stages and children, its sums, and its refusals."""
import json

import pytest

from pipeline import params
from pipeline.data.prepare import load_prepared, prepared_meta
from pipeline.errors import ParamsError
from pipeline.measure import gpucheck
from tests.conftest import no_cuda, write_params

TINY = {"frameworks": ["torch"], "models": ["mlp", "cnn"], "data.name": "idx", "data.mirrors": ["http://x"],
        "cnn.channels": [4], "cnn.dense": 16, "mlp.hidden": [16], "schedule.mlp.epochs": 1, "schedule.cnn.epochs": 1,
        "threads": 1, "bench.warmup": 1, "bench.steps": 2, "bench.repeats": 3, "bench.latency_calls": 20,
        "bench.infer_batch_sizes": [1, 16], "bench.min_repeat_s": 0, "bench.repeat_max_s": 2,
        "bench.calib_s": 0.05}


def test_a_dry_run_times_the_stages_and_sweeps_batch_sizes_in_fresh_children(prepared, capsys):
    pp = write_params(prepared / "params.yaml", **TINY)
    out = prepared / "gpu-check.json"
    gpucheck.main(["--cpu", "--data", str(prepared / "prepared.npz"), "--params", str(pp), "--precisions", "fp32",
                   "--batch-sizes", "8,16", "--out", str(out)])
    got = json.loads(out.read_text())
    assert [(s["stage"], s["seeds"]) for s in got["stages"]] == [("train@torch-mlp", 1), ("train@torch-cnn", 1)]
    points = {(r["model"], r["batch_size"], r["variant"]): r for r in got["points"]}
    assert set(points) == {(m, b, v) for b in (8, 16) for m, v in (("mlp", "eager"), ("mlp", "channels_last"),
                                                                    ("cnn", "eager"), ("cnn", "channels_last"))}
    assert points[("mlp", 8, "channels_last")]["status"] == "absent"  # an MLP has no convolution to lay out
    raw = load_prepared(prepared / "prepared.npz")
    p = params.load(pp)
    flops = {m: net.flops_per_sample() for m, (net, _) in params.networks(
        p, tuple(prepared_meta(raw)["image_shape"]), len(raw["classes"])).items()}
    for (model, batch, variant), r in points.items():
        if r["status"] != "ok":
            continue
        # one timed repeat: samples/s x seconds per step is the batch the child was told to train at
        assert r["train_samples_per_s"] * r["train_step_ms"] / 1e3 == pytest.approx(batch, rel=1e-6)
        assert r["pct_of_device"] == pytest.approx(
            100 * r["train_samples_per_s"] * 3 * flops[model] / (r["speedometer_gflops"] * 1e9))  # 3x forward
        assert r["precision"] == "fp32" and r["device"] == "cpu"
        assert r["train_cv_pct"] >= 0.0  # the spread column, over its timed repeats
        assert r["child_wall_s"] > r["child_setup_s"] > 0  # the parent's clock spans the child's start-up
    printed = capsys.readouterr().out
    assert "Not measured: torch mlp channels_last: no convolutions" in printed
    assert "train@torch-cnn" in printed and "% of device" in printed


@no_cuda
def test_without_a_gpu_it_says_so_in_one_line(prepared):
    with pytest.raises(ParamsError, match="gpu-check: NVML sees no NVIDIA GPU here"):
        gpucheck.main(["--data", str(prepared / "prepared.npz")])


@pytest.mark.parametrize("args, message", [
    (["--precisions", "fp32,tf32"], "gpu-check: --precisions tf32 runs only on a CUDA GPU"),
    (["--precisions", "fp32", "--variants", "xla"], "params.yaml: bench.variants: expected a list of distinct names"),
    (["--precisions", "fp8"], "params.yaml: precision: expected one of fp32 | tf32 | bf16 | fp16, got 'fp8'"),
    (["--batch-sizes", "128,big"], "gpu-check: --batch-sizes '128,big': expected integers"),
])
def test_bad_settings_stop_it_before_anything_runs(prepared, monkeypatch, args, message):
    monkeypatch.setattr(gpucheck, "stage_times", lambda *a: pytest.fail("ran before its settings were checked"))
    pp = write_params(prepared / "params.yaml", **TINY)
    with pytest.raises(ParamsError, match=message.replace("|", r"\|").replace("(", r"\(")):
        gpucheck.main(["--cpu", "--data", str(prepared / "prepared.npz"), "--params", str(pp), *args])


def test_no_train_runs_the_sweep_alone(prepared, monkeypatch, capsys):
    from pipeline.records import Measurement
    ran = []
    monkeypatch.setattr(gpucheck.subprocess, "run", lambda *a, **k: pytest.fail("a train stage ran"))
    monkeypatch.setattr(gpucheck.zygote, "spawn", lambda via, data, path, fw, kind, threads, label, bs: ran.append(
        (fw, kind, bs)) or [Measurement("cnn", "cuda_graphs", status="absent", reason="stub", framework=fw,
                                        device="cpu")])
    pp = write_params(prepared / "params.yaml", **TINY)
    gpucheck.main(["--cpu", "--no-train", "--data", str(prepared / "prepared.npz"), "--params", str(pp),
                   "--precisions", "fp32", "--batch-sizes", "8,16"])
    assert ran == [("torch", "variants", 8), ("torch", "variants", 16)]
    assert "not run (--no-train)" in capsys.readouterr().out


def test_a_gpu_older_than_ampere_is_surveyed_in_fp32_and_fp16_and_told_why_not_in_tf32_or_bf16(
        prepared, monkeypatch, caplog):
    from pipeline.records import Measurement
    ran = []
    monkeypatch.setattr(gpucheck, "_cuda", lambda: True)
    monkeypatch.setattr(gpucheck, "_gpu", lambda: ("Tesla T4", (7, 5)))
    monkeypatch.setattr(gpucheck.zygote, "spawn", lambda via, data, path, fw, kind, threads, label, bs: ran.append(
        label) or [Measurement("cnn", "eager", status="absent", reason="stub", framework=fw, device="Tesla T4")])
    pp = write_params(prepared / "params.yaml", **TINY)
    with caplog.at_level("INFO", logger="gpu-check"):
        gpucheck.main(["--no-train", "--data", str(prepared / "prepared.npz"), "--params", str(pp),
                       "--batch-sizes", "8"])  # the default precisions: fp32, tf32, bf16, fp16
    assert ran == ["torch fp32 batch 8", "torch fp16 batch 8"]  # fp16: a T4's tensor cores
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert said == [f"skipped: precision: {p} needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere and "
                    "later); this Tesla T4 is 7.5: use fp32" for p in ("tf32", "bf16")]
    with pytest.raises(ParamsError, match=r"^gpu-check: --precisions bf16: none of them runs on this Tesla T4 "
                                          r"\(compute capability 7.5\); use fp32$"):
        gpucheck.main(["--no-train", "--data", str(prepared / "prepared.npz"), "--params", str(pp),
                       "--precisions", "bf16"])


def test_a_shared_gpu_is_said_under_the_sweep():
    # another job on the same GPU takes its share of every figure: the survey says so, as the report does
    from pipeline.records import Measurement
    rows = [gpucheck.point(Measurement(m, "eager", status="unsupported", reason="stub", framework="torch",
                                       device="NVIDIA H200", gpu_processes_after=n), "bf16", 512, {"mlp": 1, "cnn": 1})
            for m, n in (("mlp", 1.0), ("cnn", 3.0))]
    assert "Shared GPU: other processes computed on it as 1 of 2 rows' children ended" in gpucheck.summary([], rows)
    rows[1]["gpu_processes"] = float("nan")  # NVML could not see the processes: unknown, not shared
    assert "Shared GPU" not in gpucheck.summary([], rows)
