"""The report from a small fixed set of result files: numbers, wording, figures, HTML, and bad inputs."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline import compare
from pipeline.errors import DataError
from pipeline.stages import report as stage
from tests.conftest import write_params

N_TEST = 200


def bench_json(fw, model, train, infer):
    default = {"torch": "eager", "tensorflow": "function"}[fw]

    def rec(phase, bs, med, half, variant=default):
        return {"phase": phase, "variant": variant, "batch_size": bs, "threads": 2, "status": "ok",
                "samples_per_s": med, "samples_per_s_q1": med - half, "samples_per_s_q3": med + half,
                "samples_per_s_iqr": 2 * half, "cv_pct": 1.0, "repeats": 5, "step_time_ms_p50": 1.0,
                "pct_of_peak": 10.0}
    records = [{"phase": "matmul", "variant": "fp32", "batch_size": 64, "threads": 2, "status": "ok", "gflops": 100.0,
                "gflops_iqr": 1.0},
               rec("train", 128, *train), rec("infer", 512, *infer),
               {"phase": "latency", "variant": default, "batch_size": 1, "threads": 2, "status": "ok",
                "latency_ms_p50": 0.5, "latency_ms_p95": 0.7, "latency_ms_p99": 0.9, "calls": 50},
               {"phase": "train", "variant": "xla" if fw == "tensorflow" else "compile", "batch_size": 128,
                "threads": 2, "status": "unsupported", "reason": "RuntimeError: no compiler"},
               rec("threads-train", 128, train[0] / 2, 1, default) | {"threads": 1}]
    return ({"framework": fw, "model": model, "default_variant": default, "variants": {default: "the default"},
             "records": records},
            {"train_samples_per_s": train[0], "infer_samples_per_s": infer[0], "latency_ms_p50": 0.5,
             "latency_ms_p95": 0.7, "latency_ms_p99": 0.9})


def make_results(root, mlp_tf_wrong=0, cnn_tf_wrong=30):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, N_TEST)
    (root / "env.json").write_text(json.dumps({"cpu": "Test CPU 9000", "cores_available": 2, "gpus": [],
                                               "versions": {"torch": "2.13.0"}}))
    init = rng.normal(size=(16, 10)).astype(np.float32)
    for fw in ("torch", "tensorflow"):
        for model in ("mlp", "cnn"):
            d = root / "runs" / f"{fw}-{model}"
            d.mkdir(parents=True)
            wrong = {"mlp": mlp_tf_wrong, "cnn": cnn_tf_wrong}[model] if fw == "tensorflow" else 0
            pred = y.copy()
            pred[:wrong] = (y[:wrong] + 1) % 10
            acc = float((pred == y).mean())
            (d / "metrics.json").write_text(json.dumps({"test_acc": acc, "test_acc_std": 0.0, "train_time_s": 12.5,
                                                        "train_samples_per_s": 4321.0, "params": 1234,
                                                        "epochs": 3, "seeds": 1}))
            (d / "run.json").write_text(json.dumps({"init_weights_sha256": f"w-{model}", "batch_order_sha256": "o",
                                                    "readback_weights_sha256": f"w-{model}",
                                                    "layer_param_counts": [10, 20]}))
            pd.DataFrame({"seed": [0], "test_acc": [acc]}).to_csv(d / "seeds.tsv", sep="\t", index=False)
            pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "train_acc": [0.6, 0.8, 0.9],
                          "val_loss": [0.9, 0.6, 0.4], "val_acc": [0.7, 0.8, 0.85]}).to_csv(d / "history.tsv",
                                                                                         sep="\t", index=False)
            cm = pd.DataFrame(np.eye(10, dtype=int) * 20, index=list("0123456789"), columns=list("0123456789"))
            cm.rename_axis("true").to_csv(d / "confusion.tsv", sep="\t")
            np.savez(d / "predictions.npz", y_true=y, y_pred=pred, logits=np.zeros((N_TEST, 10), np.float32),
                     init_logits=init + (5e-6 if fw == "tensorflow" else 0))
            b = root / "bench" / f"{fw}-{model}"
            b.mkdir(parents=True)
            speeds = {"torch": ((1000.0, 10.0), (5000.0, 400.0)), "tensorflow": ((500.0, 10.0), (5100.0, 400.0))}[fw]
            records, metrics = bench_json(fw, model, *speeds)
            (b / "records.json").write_text(json.dumps(records))
            (b / "metrics.json").write_text(json.dumps(metrics))
    for fw in ("torch", "tensorflow"):
        recs = [{"workers": w, "what": "loader", "samples_per_s": s, "samples_per_s_q1": s - 5,
                 "samples_per_s_q3": s + 5, "samples_per_s_iqr": 10, "batches_per_s": s / 128, "cv_pct": 1,
                 "repeats": 3} for w, s in (("0", 900.0), ("2", 1800.0))]
        (root / "loaders" / fw).mkdir(parents=True)
        (root / "loaders" / fw / "records.json").write_text(json.dumps({"framework": fw, "records": recs}))
    meta = json.dumps({"dataset": "digits", "image_shape": [8, 8, 1], "sizes": {"train": 10, "val": 5,
                                                                              "test": N_TEST}})
    np.savez(root / "prepared.npz", meta=np.array(meta), x_test=rng.integers(0, 255, (N_TEST, 8, 8)).astype(np.uint8),
             y_test=y, classes=np.array(list("0123456789")))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "reports"
    root.mkdir()
    make_results(root)
    write_params(tmp_path / "params.yaml", **{"data.name": "digits"})
    return root


def run_report(root):
    stage.main(["--results", str(root), "--data", str(root / "prepared.npz"), "--params",
                str(root.parent / "params.yaml")])
    return (root / "summary.md").read_text()


def test_summary_has_the_numbers_and_noise_aware_wording(results):
    md = run_report(results)
    assert "dataset `digits`" in md and "Test CPU 9000" in md
    assert "| PyTorch     | mlp     | 100.00 ± 0.00" in md
    assert "85.00 ± 0.00" in md  # TensorFlow cnn: 30 of 200 wrong
    assert "**mlp**: no clear difference (100.00% vs 100.00%, McNemar p = 1)" in md
    p = compare.mcnemar_p(np.ones(N_TEST, bool), np.r_[np.zeros(30, bool), np.ones(N_TEST - 30, bool)])
    assert f"**cnn**: PyTorch is more accurate (100.00% vs 85.00%, McNemar p = {p:.3g})" in md
    assert ("**mlp train** (default variants, batch 128): PyTorch is faster (1,000 vs 500 samples/s, "
            "PyTorch/TensorFlow = 2.00x; interquartile ranges do not overlap)") in md
    assert "**mlp infer** (default variants, batch 512): no clear difference (5,000 vs 5,100 samples/s" in md
    assert "unsupported" in md and "RuntimeError: no compiler" in md
    assert "**PyTorch loader**: best workers=2, 2.00x of workers=0: workers=2 is faster" in md
    assert "| mlp     | True" in md  # equivalence row
    diff = float(re.search(r"\| cnn .*\|\s+([0-9.e-]+) \| True\s+\|", md).group(1))
    assert diff == pytest.approx(5e-6, rel=0.01)  # initial logits max abs diff, from the two npz files
    assert "```\nseed: 0\nthreads: 2\n" in md  # the exact params file of the run


def test_results_csv_is_tidy(results):
    run_report(results)
    df = pd.read_csv(results / "results.csv", dtype={"workers": str})
    assert {"framework", "model", "source", "metric", "value", "unit", "spread"} <= set(df.columns)
    row = df[(df.framework == "torch") & (df.model == "mlp") & (df.metric == "train_samples_per_s")
             & (df.source == "bench")]
    assert row.value.tolist() == [1000.0] and row.spread.tolist() == [20.0] and row.unit.tolist() == ["samples/s"]
    assert set(df[df.source == "loaders"].workers.astype(str)) == {"0", "2"}


def test_figures_are_valid_images_and_html_is_self_contained(results):
    from PIL import Image

    run_report(results)
    figs = sorted((results / "figures").glob("*.png"))
    assert [f.name for f in figs] == ["confusion.png", "learning_curves.png", "loaders.png", "samples.png",
                                      "threads.png", "throughput.png"]
    for f in figs:
        with Image.open(f) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    html = (results / "index.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == len(figs)
    assert "<table" in html and "PyTorch is faster" in html


def test_two_seeds_use_welch_too():
    txt = compare.accuracy("A", [0.99, 0.991, 0.989], "B", [0.98, 0.981, 0.979], p_mcnemar=0.001)
    assert txt.startswith("A is more accurate") and "Welch t-test over seeds p =" in txt
    txt = compare.accuracy("A", [0.99, 0.98], "B", [0.985, 0.986], p_mcnemar=0.001)
    assert txt.startswith("no clear difference")


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "bench" / "torch-cnn" / "records.json").unlink(), r"bench/torch-cnn/records.json: missing; run `dvc repro bench@torch-cnn` first"),
    (lambda r: (r / "bench" / "torch-mlp" / "metrics.json").unlink(), r"bench/torch-mlp/metrics.json: missing"),
    (lambda r: (r / "runs" / "tensorflow-mlp" / "metrics.json").write_text("{oops"), r"runs/tensorflow-mlp/metrics.json: malformed JSON"),
    (lambda r: (r / "runs" / "torch-mlp" / "history.tsv").write_text("epoch\tval_acc\n1\t0.5\n"), r"runs/torch-mlp/history.tsv: malformed \(missing columns train_loss"),
    (lambda r: (r / "loaders" / "torch" / "records.json").write_text("{}"), r"loaders/torch/records.json: malformed \(missing records\)"),
    (lambda r: (r / "runs" / "torch-cnn" / "predictions.npz").write_bytes(b"junk"), r"runs/torch-cnn/predictions.npz: unreadable"),
])
def test_missing_or_malformed_result_file_is_named(results, breakage, message):
    breakage(results)
    with pytest.raises(DataError, match=message):
        run_report(results)
    assert not (results / "summary.md").exists() and not (results / "index.html").exists()
