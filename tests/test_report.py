"""The report from a small fixed set of result files: numbers, wording, figures, HTML, and bad inputs."""
import inspect
import json
import math
import re
from pathlib import Path
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.measure import verdict
from pipeline.records import CellMetrics
from pipeline.report import figures
from pipeline.stages import report as stage
from tests.conftest import write_params

N_TEST = 200


def bench_records(root, vary=(), gpu=False):
    """reports/bench/records.json as the stage writes it, from scripted children run through pipeline/measure:
    torch trains MLPs 2x as fast as TensorFlow in every round; inference rates are equal. `vary`: other values of
    train.batch_size as interleaved arms (params' own: 128), each training 1.5x as fast per doubling; batch-1
    inference is 25x slower than batch 512. `gpu`: the
    children report a GPU, whose allocator peaked at 100 MiB + 1 MiB per sample of the batch."""
    from pipeline import params
    from pipeline.measure import bench, rounds
    from pipeline.probe import speedo
    from pipeline.records import Measurement, Rates, framework_of, setting_of
    from tests.conftest import raw_params

    cfg = params.parse(raw_params(**{"bench.infer_batch_sizes": [1, 512]} | ({"bench.vary": "train.batch_size",
                                                                            "bench.vary_values": list(vary)}
                                                                           if vary else {}))).bench
    speed = {"torch": {"mlp": 1000.0, "cnn": 300.0}, "tensorflow": {"mlp": 500.0, "cnn": 310.0}}

    def child(arm, rd, kind="round", threads=2, variant=None, calm=0.0):
        fw = framework_of(arm)
        jitter = 1 + 0.01 * ((rd or 0) % 3)
        rows = []
        for model in ("mlp", "cnn"):
            rate = speed[fw][model] * jitter / (2 if threads == 1 else 1)
            batch = setting_of(arm)[1] if setting_of(arm) else 128
            rate *= 1.5 ** np.log2(batch / 128)
            infer = 5000.0 * jitter
            rows.append(Measurement(
                model, variant or {"torch": "eager"}.get(fw, "function"), framework=fw, threads=threads,
                train=Rates(rate, rate, rate, 1.0, 0.0, 3, 1.0),
                infer={bs: Rates(v, v, v, 0.0, 0.0, 3, 1.0) for bs, v in ((1, infer / 25), (512, infer))},
                latency_ms_p50=0.5, latency_ms_p95=0.7, latency_ms_p99=0.9, first_step_s=0.2,
                calib_before_gflops=200.0 * jitter, calib_after_gflops=201.0 * jitter, description="the default",
                kind=kind, arm=fw, device="NVIDIA H100" if gpu else "cpu", child_wall_s=6.0 + rd % 2,
                child_setup_s=2.5, child_forked=fw == "torch",  # on a GPU TensorFlow's children start anew
                child_calib_s=0.6, measure_s={"mlp": 1.0, "cnn": 2.0}[model],
                host_calib_before_gflops=150.0 if gpu else math.nan, host_calib_after_gflops=150.0 if gpu else math.nan,
                train_mem_peak_mb=100.0 + batch if gpu else math.nan,
                # NVML at the child's end: PyTorch's round-3 child throttled, another job beside TensorFlow's round-2
                gpu_sm_clock_mhz_after=(1500.0 if (arm, rd) == ("torch", 2) else 1980.0) if gpu else math.nan,
                gpu_temperature_c_after=60.0 + (rd or 0) % 3 if gpu else math.nan, gpu_power_w_after=400.0 if gpu
                else math.nan, gpu_processes_after=(2.0 if (arm, rd) == ("tensorflow", 1) else 1.0) if gpu else math.nan))
        return rows
    arms = rounds.arms(["torch", "tensorflow"], True, cfg.vary, cfg.vary_values, 128)
    rows = rounds.run_rounds(child, arms, cfg.rounds, cfg.max_drift)
    rows += [r for fw in ("torch", "tensorflow") for r in child(fw, 0, kind="variants")]
    rows += [Measurement("mlp", "xla", status="unsupported", reason="RuntimeError: no compiler", kind="variants",
                         arm="tensorflow", framework="tensorflow", description="XLA", calib_before_gflops=200.0,
                         calib_after_gflops=200.0)]
    rows += [Measurement(m, "fit", status="absent", reason="Keras' own loop", kind="variants", arm="torch",
                         framework="torch", calib_before_gflops=200.0, calib_after_gflops=200.0) for m in ("mlp", "cnn")]
    rows += [] if gpu else [r for fw in ("torch", "tensorflow") for r in child(fw, 0, kind="threads", threads=1)]
    flops = {"mlp": 1000, "cnn": 100000}
    stab = speedo.stability(rounds.calibrations(rows))
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "records.json").write_text(json.dumps({
        "threads": 2, "rounds": cfg.rounds, "rounds_run": 1 + max(r.round for r in rows if r.kind == "round"),
        "max_s": cfg.max_s, "min_effect": cfg.min_effect, "calibration": asdict(stab), "flagged": [],
        "records": [r.flat() for r in rows], "cells": [c.flat() for c in bench.per_cell(rows, flops,
                                                                                          stab.gflops_median)],
        "verdicts": [asdict(v) for v in bench.comparisons(rows, ["torch", "tensorflow"], ["mlp", "cnn"], cfg,
                                                          {"train.batch_size": 128})],
        "vary": cfg.vary, "vary_own": 128 if vary else None, "threads_skipped": gpu,
        "devices": sorted({r.device for r in rows})}))


def scale_records(root, measured=True):
    """reports/scale/records.json through scale/run.summary from scripted launches: torch 1000 samples/s (mlp) at
    1 worker and 600 at 2; TensorFlow 800 and 640; the CNNs never reach the target."""
    from pipeline.scale import run
    rows = [{"framework": fw, "model": m, "workers": n, "round": r, "samples_per_s": rate * (1 + 0.01 * (r % 3)) *
             (0.3 if m == "cnn" else 1), "comm_share": 0.1 * (n - 1), "flag": "", "comm": comm, "device": "cpu",
             "calib_before_gflops": 100.0, "calib_after_gflops": 100.0}
            for r in range(6) for fw, comm, rates in (("torch", "gloo", (1000.0, 600.0)),
                                                     ("tensorflow", "collective ring", (800.0, 640.0)))
            for m in ("mlp", "cnn") for n, rate in zip((1, 2), rates)]
    table, verdicts = run.summary(rows, ["torch", "tensorflow"], ["mlp", "cnn"], [1, 2], 0.05, 0.25)
    (root / "scale").mkdir(parents=True, exist_ok=True)
    (root / "scale" / "records.json").write_text(json.dumps(
        {"measured": measured, "threads": 2, "workers": [1, 2], "rounds": 6, "global_batch": 128, "host": "localhost",
         "speedometer": "NumPy fp32 GEMM 512x512 on the CPU",
         "flagged": 0, "rows": rows, "table": table, "verdicts": verdicts} if measured else
        {"measured": False, "rows": [], "table": [], "verdicts": []}))


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
            ttt = {"torch": 10.0, "tensorflow": 12.5}[fw] if model == "mlp" else None  # CNNs never reach it
            (d / "metrics.json").write_text(json.dumps(asdict(CellMetrics(
                test_acc=acc, test_acc_std=0.0, train_time_s=12.5, train_samples_per_s=4321.0,
                params=1234, epochs=3, epochs_trained=2.0 if ttt else 3.0, seeds=1, target_val_acc=0.8, reached_seeds=int(ttt is not None),
                time_to_target_s=ttt, time_to_target_s_min=ttt, time_to_target_s_max=ttt,
                epochs_to_target=2.0 if ttt else None, best_val_acc=0.85 if ttt else 0.75, test_loss=0.3,
                val_acc=0.8, test_samples=N_TEST, macro_f1=acc, flops_per_sample=1000))))
            (d / "run.json").write_text(json.dumps({"init_weights_sha256": f"w-{model}", "batch_order_sha256": "o",
                                                    "readback_weights_sha256": f"w-{model}",
                                                    "layer_param_counts": [10, 20], "eval_every": 100,
                                                    "batch_size": 128, "device": "cpu", "precision": "fp32",
                                                    "intra_op_threads": 2}))
            pd.DataFrame({"seed": [0], "test_acc": [acc], "reached": [ttt is not None], "time_to_target_s": [ttt],
                          "steps_to_target": [30 if ttt else None]}).to_csv(d / "seeds.tsv", sep="\t", index=False)
            pd.DataFrame({"step": [10, 20, 30], "epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3],
                          "train_acc": [0.6, 0.8, 0.9], "train_s": [4.0, 8.0, 12.5], "val_loss": [0.9, 0.6, 0.4],
                          "val_acc": [0.7, 0.8, 0.85]}).to_csv(d / "history.tsv", sep="\t", index=False)
            cm = pd.DataFrame(np.eye(10, dtype=int) * 20, index=list("0123456789"), columns=list("0123456789"))
            cm.rename_axis("true").to_csv(d / "confusion.tsv", sep="\t")
            np.savez(d / "predictions.npz", y_true=y, y_pred=pred, logits=np.zeros((N_TEST, 10), np.float32),
                     init_logits=init + (5e-6 if fw == "tensorflow" else 0))
    bench_records(root)
    for fw in ("torch", "tensorflow"):
        recs = [{"workers": w, "what": "loader", "samples_per_s": s, "samples_per_s_q1": s - 5,
                 "samples_per_s_q3": s + 5, "samples_per_s_iqr": 10, "batches_per_s": s / 128, "cv_pct": 1,
                 "repeats": 3} for w, s in (("0", 900.0), ("2", 1800.0))]
        (root / "loaders" / fw).mkdir(parents=True)
        (root / "loaders" / fw / "records.json").write_text(json.dumps({"framework": fw, "records": recs}))
    scale_records(root)
    meta = json.dumps({"dataset": "digits", "image_shape": [8, 8, 1], "sizes": {"train": 10, "val": 5,
                                                                              "test": N_TEST}})
    np.savez(root / "prepared.npz", meta=np.array(meta), x_test=rng.integers(0, 255, (N_TEST, 8, 8)).astype(np.uint8),
             y_test=y, classes=np.array(list("0123456789")))


@pytest.fixture(autouse=True)
def quick_figures(request, monkeypatch):
    """Each figure a blank PNG, unless a test is marked `figures`: drawing them is most of a report's 7 s, and only
    those tests look at them (the whole-pipeline test draws every one too). A blank figure still binds its
    arguments to the real function's signature, so a changed call from the report is still an error here."""
    if request.node.get_closest_marker("figures"):
        return
    from PIL import Image

    def blank(real):
        sig = inspect.signature(real)

        def draw(*args, **kwargs):
            path = sig.bind(*args, **kwargs).arguments["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (1, 1)).save(path, format="PNG")
            return path
        return draw
    for name, real in inspect.getmembers(figures, inspect.isfunction):
        if real.__module__ == figures.__name__ and "path" in inspect.signature(real).parameters:
            monkeypatch.setattr(figures, name, blank(real))


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
    # the headline comes first, the environment last
    assert md.index("## Time to target accuracy") < md.index("## Accuracy") < md.index("## Environment")
    assert "| mlp     | PyTorch     |              0.8 | 1/1               | 10.0 [10.0–10.0]           | 2.00 " in md
    assert "| cnn     | TensorFlow  |              0.8 | 0/1               | not reached (best 0.7500)  | —    " in md
    # one seed: the same steps to target, so the bench's interleaved per-step verdict carries the time-to-target one
    # both met the target at the evaluation of step 30: time ratio = 1 / the per-step ratio, [1/2, 1/2]
    assert ("**mlp**, PyTorch vs TensorFlow, time to target: PyTorch reaches the target faster: 30 vs 30 steps to "
            "target, the same to within one evaluation (10 steps), and per step PyTorch is faster "
            "(PyTorch/TensorFlow = 2.00x, 96.9% CI 2.00–2.00, 6 rounds); time PyTorch/TensorFlow in 0.50–0.50x") in md
    assert "**cnn**, PyTorch vs TensorFlow, time to target: no verdict: PyTorch and TensorFlow did not reach" in md
    # steps to target 30 x batch 128 / the bench's median rate (1,010 samples/s for torch mlp)
    assert "| 2.00               | 30                | 3.8                |" in md
    assert "| PyTorch     | mlp     | 100.00 ± 0.00" in md
    assert "85.00 ± 0.00" in md  # TensorFlow cnn: 30 of 200 wrong
    assert "**mlp**, PyTorch vs TensorFlow: no clear difference (100.00% vs 100.00%; right only in PyTorch: 0, only in TensorFlow: 0; " \
           "McNemar p = 1; one seed)" in md
    p = verdict.mcnemar_p(np.ones(N_TEST, bool), np.r_[np.zeros(30, bool), np.ones(N_TEST - 30, bool)])
    # one seed: the wording is about these two trained models, and the winner is the one McNemar points to
    assert (f"**cnn**, PyTorch vs TensorFlow: these two trained models differ on the test set, PyTorch's is right more often (100.00% vs "
            f"85.00%; right only in PyTorch: 30, only in TensorFlow: 0; McNemar p = {p:.3g}; one seed)") in md
    assert ("**mlp train**, PyTorch vs TensorFlow: PyTorch is faster (PyTorch/TensorFlow = 2.00x, 96.9% CI "
            "2.00–2.00, 6 rounds)") in md
    assert "**mlp infer**, PyTorch vs TensorFlow: no clear difference (PyTorch/TensorFlow = 1.00x" in md
    assert ("**mlp train**, PyTorch vs PyTorch again (A/A control): no clear difference (PyTorch/PyTorch again = "
            "1.00x") in md
    # 3% < the 5% minimum effect
    assert "**cnn train**, PyTorch vs TensorFlow: no clear difference (PyTorch/TensorFlow = 0.97x" in md
    assert "Machine stability" in md and "No child was flagged." in md
    assert "unsupported here: RuntimeError: no compiler" in md
    assert "Not measured: PyTorch `fit` (mlp, cnn): Keras' own loop." in md
    assert not re.search(r"\| PyTorch +\| mlp +\| fit ", md) and re.search(r"\| TensorFlow +\| mlp +\| xla ", md)
    assert "**PyTorch loader**: fastest with workers=2, 2.00x of workers=0 (1,800 vs 900 samples/s; repeats do " \
           "not overlap within one process, a diagnostic)" in md
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
    per_round = [1000.0 * (1 + 0.01 * (rd % 3)) for rd in range(6)]  # the scripted rounds
    assert row.value.tolist() == [np.median(per_round)] and row.unit.tolist() == ["samples/s"]
    assert row.low.tolist() == [np.percentile(per_round, 25)] and row.high.tolist() == [np.percentile(per_round, 75)]
    ratio = df[(df.metric == "train_ratio") & (df.model == "mlp") & (df.framework == "torch/tensorflow")
               & (df.source == "bench")]
    assert ratio.value.tolist() == [2.0] and ratio.n.tolist() == [6] and "CI" in ratio.spread_kind.iloc[0]
    assert set(df[df.source == "loaders"].workers.astype(str)) == {"0", "2"}


@pytest.mark.figures
def test_figures_are_valid_images_and_html_is_self_contained(results):
    from PIL import Image

    run_report(results)
    figs = sorted((results / "figures").glob("*.png"))
    assert [f.name for f in figs] == ["confusion.png", "learning_curves.png", "loaders.png", "rounds.png",
                                      "samples.png", "scaling.png", "threads.png", "time_to_target.png"]
    for f in figs:
        with Image.open(f) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    html = (results / "index.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == len(figs)
    assert "<table" in html and "PyTorch is faster" in html


def test_several_seeds_use_a_paired_test_over_seeds():
    txt = verdict.accuracy("A", [0.99, 0.991, 0.989], "B", [0.98, 0.981, 0.979], 0.001, 20, 2)
    assert txt.startswith("A is more accurate") and "paired t-test over 3 seeds p =" in txt
    # seed-to-seed spread larger than the difference: no claim, however small McNemar's p on one seed
    txt = verdict.accuracy("A", [0.99, 0.98], "B", [0.985, 0.986], 0.001, 20, 2)
    assert txt.startswith("no clear difference")
    # pairing matters: B is better on every seed by a small, steady margin that an unpaired test would miss
    a, b = [0.950, 0.970, 0.990, 0.960], [0.952, 0.9721, 0.9919, 0.9622]
    assert verdict.accuracy("A", a, "B", b, 0.5, 1, 2).startswith("B is more accurate")


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "bench" / "records.json").write_text("{}"), r"bench/records.json: malformed \(missing records"),
    (lambda r: (r / "runs" / "tensorflow-mlp" / "metrics.json").write_text("{oops"), r"runs/tensorflow-mlp/metrics.json: malformed JSON"),
    (lambda r: (r / "runs" / "torch-mlp" / "history.tsv").write_text("step\tepoch\tval_acc\n1\t1\t0.5\n"), r"runs/torch-mlp/history.tsv: malformed \(missing columns train_loss"),
    (lambda r: (r / "loaders" / "torch" / "records.json").write_text("{}"), r"loaders/torch/records.json: malformed \(missing records\)"),
    (lambda r: (r / "runs" / "torch-cnn" / "metrics.json").write_text(json.dumps({"test_acc": 0.9})),
     r"runs/torch-cnn/metrics.json: malformed \(missing target_val_acc, reached_seeds, .*macro_f1, params, "
     r"flops_per_sample, epochs, epochs_trained\); rerun `dvc repro train@torch-cnn`"),
    (lambda r: (r / "runs" / "torch-cnn" / "predictions.npz").write_bytes(b"junk"), r"runs/torch-cnn/predictions.npz: unreadable"),
])
def test_missing_or_malformed_result_file_is_named(results, breakage, message):
    breakage(results)
    with pytest.raises(DataError, match=message):
        run_report(results)
    assert not (results / "summary.md").exists() and not (results / "index.html").exists()


def test_a_stage_that_left_nothing_is_named_first_and_in_its_sections_with_the_command_that_makes_it(results):
    (results / "bench" / "records.json").unlink()
    (results / "runs" / "tensorflow-cnn" / "metrics.json").unlink()  # written last: the cell did not finish
    md = run_report(results)
    bench = f"`bench` left no results ({results / 'bench' / 'records.json'} is missing: run `dvc repro bench`)"
    cell = (f"`train@tensorflow-cnn` left no results ({results / 'runs' / 'tensorflow-cnn' / 'metrics.json'} is "
            "missing: run `dvc repro train@tensorflow-cnn`)")
    assert md.split("\n\n")[1] == f"**Not in this report**: {cell}; {bench}."
    assert f"## Speed\n\nNot measured: {bench}." in md
    assert f"**cnn**, PyTorch vs TensorFlow, time to target: no verdict: {cell}" in md
    assert f"**mlp**, PyTorch vs TensorFlow, time to target: no verdict: PyTorch and TensorFlow" not in md
    assert f"per step no verdict: {bench}" in md  # the mlp's steps agree, but there is no per-step speed


def test_a_diverged_cell_is_called_diverged_not_unreached(results):
    path = results / "runs" / "tensorflow-cnn" / "metrics.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"diverged_seeds": 1, "best_val_acc": None}))
    md = run_report(results)
    assert "| cnn     | TensorFlow  |              0.8 | 0/1               | diverged (1/1 seeds)" in md
    assert "| cnn     | PyTorch     |              0.8 | 0/1               | not reached (best 0.7500)" in md
    assert "TensorFlow diverged): no verdict: PyTorch and TensorFlow did not reach the target" in md
    rows = pd.read_csv(results / "results.csv")
    got = rows[(rows.metric == "diverged_seeds") & (rows.model == "cnn")].set_index("framework")["value"]
    assert got.to_dict() == {"torch": 0, "tensorflow": 1}


def test_the_report_shows_training_images_per_class_and_flags_imbalance(results):
    with np.load(results / "prepared.npz") as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(results / "prepared.npz", **arrays, class_counts=np.array([500] * 9 + [20]))
    md = run_report(results)
    assert "Training images per class: 0 500, 1 500, 2 500, 3 500, 4 500, 5 500, 6 500, 7 500, 8 500, 9 20. " \
           "**Strongly imbalanced** (20 to 500)" in md
    np.savez(results / "prepared.npz", **arrays, class_counts=np.array([500] * 9 + [60]))
    md = run_report(results)
    assert "9 60." in md and "imbalanced" not in md


def test_the_report_opens_with_the_time_to_target_verdicts_and_the_evidence_behind_them(results):
    md = run_report(results)
    head = md[:md.index("## Time to target accuracy")]
    assert ("**mlp** (PyTorch 10.0 s to 0.8, TensorFlow 12.5 s to 0.8): PyTorch reaches the target faster: 30 vs "
            "30 steps to target") in head
    assert "**cnn** (PyTorch not reached (best 0.7500), TensorFlow not reached (best 0.7500)): no verdict" in head
    assert "Speed evidence: 6 interleaved rounds, 18 fresh processes, 0 flagged by the drift monitor" in head
    assert "got no verdict" not in head


def test_steps_to_target_further_apart_than_one_evaluation_give_no_verdict_from_one_seed(results):
    d = results / "runs" / "tensorflow-mlp"
    pd.read_csv(d / "seeds.tsv", sep="\t").assign(steps_to_target=[300]).to_csv(d / "seeds.tsv", sep="\t", index=False)
    pd.read_csv(d / "history.tsv", sep="\t").assign(step=[100, 200, 300]).to_csv(d / "history.tsv", sep="\t",
                                                                                 index=False)
    md = run_report(results)
    assert ("**mlp**, PyTorch vs TensorFlow, time to target: no verdict: from one seed, 30 vs 300 steps to target, "
            "more than one evaluation (100 steps) apart") in md
    assert "per step: PyTorch is faster (PyTorch/TensorFlow = 2.00x" in md


@pytest.mark.parametrize("tf_curve, verdict_starts, table", [
    # the same curve to within 6 of 6,000 images, flat just under the target until TensorFlow met it at 300
    ([0.7, 0.79, 0.799], "PyTorch reaches the target faster: 30 vs 300 steps to target, a crossing of flat curves: "
                         "the validation curves agree: largest gap 0.0010", "agree: largest gap"),
    # TensorFlow learned slower per step all along: its later crossing is the maths, not a draw
    ([0.6, 0.7, 0.75], "no verdict: from one seed, 30 vs 300 steps to target, more than one evaluation (10 steps) "
                       "apart, and one seed cannot tell a framework's steps from a seed's (the validation curves "
                       "differ beyond noise: largest gap 0.1000 = 11.5 SE", "differ: largest gap 11.5 SE"),
])
def test_far_apart_crossings_of_agreeing_curves_get_the_per_step_verdict(results, tf_curve, verdict_starts, table):
    for fw in ("torch", "tensorflow"):
        d = results / "runs" / f"{fw}-mlp"
        run = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps(run | {"val_samples": 6000}))
    d = results / "runs" / "torch-mlp"  # met the target 0.8 at its third evaluation
    pd.read_csv(d / "history.tsv", sep="\t").assign(val_acc=[0.7, 0.79, 0.8]).to_csv(d / "history.tsv", sep="\t",
                                                                                     index=False)
    d = results / "runs" / "tensorflow-mlp"
    pd.read_csv(d / "seeds.tsv", sep="\t").assign(steps_to_target=[300]).to_csv(d / "seeds.tsv", sep="\t", index=False)
    steps = list(range(10, 301, 10))
    acc = tf_curve + [0.79] * (len(steps) - 4) + [0.8]
    pd.DataFrame({"step": steps, "epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "train_s": np.arange(1, 31.0),
                  "val_loss": 0.5, "val_acc": acc}).to_csv(d / "history.tsv", sep="\t", index=False)
    md = run_report(results)
    assert f"**mlp**, PyTorch vs TensorFlow, time to target: {verdict_starts}" in md
    eq = md[md.index("| model   | same parameter counts"):]
    assert table in eq.splitlines()[2] and "3 evaluations" in eq.splitlines()[2]
    assert "n/a" in eq.splitlines()[3]  # the CNN cells recorded no validation size: no curve test


def test_a_noisy_bench_says_so_in_the_first_lines_with_what_to_do(results):
    path = results / "bench" / "records.json"
    rec = json.loads(path.read_text())
    for v in rec["verdicts"]:
        v |= {"winner": None, "text": "no verdict: the A/A control told identical runs apart (1.30x)"}
    rec |= {"max_s": 240, "rounds_run": 12, "flagged": [{"round": 3, "arm": "torch", "why": "slow"}]}
    path.write_text(json.dumps(rec))
    md = run_report(results)
    head = md[:md.index("## Time to target accuracy")]
    assert "12 interleaved rounds" in head and "1 flagged by the drift monitor" in head
    assert ("**8 of 8 speed comparisons got no verdict**: mlp train, mlp train (A/A control), mlp infer, mlp infer "
            "(A/A control), cnn train, cnn train (A/A control), cnn infer, cnn infer (A/A control) (the first: no "
            "verdict: the A/A control told identical runs apart (1.30x))") in head
    assert "`dvc repro -f -s bench`" in head and "`bench.max_s`, now 240 s" in head
    assert "**mlp** (PyTorch 10.0 s to 0.8, TensorFlow 12.5 s to 0.8): no verdict: 30 vs 30 steps" in head
    # only the controls short of rounds: the line names them, so a reader sees the framework verdicts stand
    for v in rec["verdicts"]:
        v |= {"winner": None if v["control"] else "PyTorch", "text": "no verdict: 4 usable rounds; at least 6 are "
              "needed for a 95% interval" if v["control"] else "PyTorch is faster (PyTorch/TensorFlow = 1.20x)"}
    path.write_text(json.dumps(rec))
    md = run_report(results)
    head = md[:md.index("## Time to target accuracy")]
    assert ("**4 of 8 speed comparisons got no verdict**: mlp train (A/A control), mlp infer (A/A control), cnn "
            "train (A/A control), cnn infer (A/A control) (the first: no verdict: 4 usable rounds;") in head


def test_one_framework_still_puts_each_models_time_to_target_first(results):
    from pipeline.report import headline, results as res
    lines = [text for _, text in headline.headline(res.collect(results, ["torch"], ["mlp", "cnn"]))]
    assert lines[:2] == ["**mlp** (PyTorch 10.0 s to 0.8): no verdict: one framework in this run (list another in "
                         "`frameworks` to compare)",
                         "**cnn** (PyTorch not reached (best 0.7500)): no verdict: one framework in this run (list "
                         "another in `frameworks` to compare)"]
    assert lines[2].startswith("Speed evidence: ")
    both = [text for _, text in headline.headline(res.collect(results, ["torch", "tensorflow"], ["mlp", "cnn"]))]
    assert not any("one framework" in line for line in both)


def test_the_stability_line_says_when_thread_arms_read_their_own_speedometer(results):
    path = results / "bench" / "records.json"
    line = lambda md: next(x for x in md.splitlines() if x.startswith("**Machine stability**"))  # noqa: E731
    assert "judged apart" not in line(run_report(results))
    path.write_text(json.dumps(json.loads(path.read_text()) | {"vary": "threads"}))
    assert ("(NumPy fp32 GEMM 512x512 on the CPU; 2 threads, the bench.vary thread arms' own readings judged apart, "
            "run before and after every child)") in line(run_report(results))


def test_a_gpu_machine_measured_on_its_cpu_or_more_threads_than_cores_say_so_first(results):
    env = json.loads((results / "env.json").read_text())
    assert "gpu_unseen" not in run_report(results)  # a CPU machine: no such line, and no empty row for it
    unseen = "this process may use 8 NVIDIA GPU(s) (/dev/nvidia0) but NVML cannot start (x); ..."
    (results / "env.json").write_text(json.dumps(env | {"gpu_unseen": unseen, "gpu_used": None}))
    md = run_report(results)
    assert md.split("\n\n")[1] == f"**Measured on the CPU, not the GPU**: {unseen}."
    assert "| gpu_unseen " in md and "gpu_used" not in md
    over = "threads: 4 is more than the 2 cores this process may use, ..."
    (results / "env.json").write_text(json.dumps(env | {"oversubscribed": over}))
    assert run_report(results).split("\n\n")[1] == f"**More threads than cores**: {over}."


def test_headline_json_and_the_overlay_data_are_what_dvc_shows(results):
    run_report(results)
    h = json.loads((results / "headline.json").read_text())["headline"]
    assert h["mlp"]["torch_time_to_target_s"] == 10.0 and h["mlp"]["tensorflow_time_to_target_s"] == 12.5
    assert h["mlp"]["torch_vs_tensorflow_time_to_target_winner"] == "PyTorch"
    assert h["mlp"]["torch_vs_tensorflow_train_ratio"] == 2.0 and h["mlp"]["torch_vs_tensorflow_train_winner"] == "PyTorch"
    assert h["mlp"]["torch_vs_tensorflow_infer_winner"] == "none"
    assert h["cnn"]["torch_time_to_target_s"] is None and h["cnn"]["torch_vs_tensorflow_time_to_target_winner"] == "none"
    assert h["speed_verdicts_withheld"] == 0 and h["flagged_children"] == 0
    assert len(json.dumps(h)) < 2000  # short: `dvc exp show` gets a readable handful of columns
    curves = pd.read_csv(results / "plots" / "val_acc.tsv", sep="\t")
    assert list(curves.columns) == ["model", "framework", "step", "train_s", "val_acc"]
    assert set(zip(curves.model, curves.framework)) == {(m, f) for m in ("mlp", "cnn") for f in ("PyTorch", "TensorFlow")}


def test_the_scaling_section_has_efficiency_verdicts_and_time_to_target_at_each_worker_count(results):
    run_report(results)
    md = (results / "summary.md").read_text()
    sec = md[md.index("## Data-parallel scaling"):]
    sec = sec[:sec.index("\n## ", 5)] if "\n## " in sec[5:] else sec
    row = next(line for line in sec.splitlines() if line.startswith("| PyTorch") and "| mlp " in line
               and "|         2 |" in line)
    assert "0.60x" in row and "0.30 [0.30–0.30]" in row  # 600 / 1000; 600 / (2 x 1000), paired per round
    assert "| 6.3 " in row  # 30 steps to target x 128 / 606 samples/s (the median over the jittered rounds)
    assert "**mlp, 1 worker**: PyTorch is faster" in sec and "**mlp, 2 workers**: no clear difference" not in sec
    assert "**mlp, 2 workers**: TensorFlow is faster" in sec  # 600 vs 640 per round: 0.94x, beyond 5%
    assert "PyTorch gloo, TensorFlow collective ring" in sec and "loopback TCP on one machine" in sec
    assert "the best speed-up is 1x" in sec  # on a CPU the workers split the cores: said why efficiency drops
    assert all("not reached" in line for line in sec.splitlines() if line.startswith("| ") and "| cnn " in line)


def test_scaling_figures_are_in_results_csv(results):
    run_report(results)
    df = pd.read_csv(results / "results.csv")
    sc = df[df.source == "scale"]
    eff = sc[(sc.metric == "efficiency") & (sc.framework == "torch") & (sc.model == "mlp") & (sc.workers == 2)]
    assert eff.value.tolist() == [pytest.approx(0.30)] and eff.n.tolist() == [6]
    ratio = sc[(sc.metric == "train_ratio") & (sc.model == "mlp") & (sc.workers == 2)]
    assert ratio.framework.tolist() == ["torch/tensorflow"] and ratio.value.tolist() == [pytest.approx(600 / 640)]


def test_scaling_not_measured_says_how_to_opt_in(results):
    scale_records(results, measured=False)
    run_report(results)
    md = (results / "summary.md").read_text()
    assert "Not measured in this run: scaling is opt-in (`dvc exp run -S 'scale.workers=[1,2]'`" in md


@pytest.mark.figures
def test_settings_as_interleaved_arms_get_verdicts_and_a_figure(results):
    import shutil
    shutil.rmtree(results / "bench")
    bench_records(results, vary=[256])
    md = run_report(results)
    assert "**Settings, interleaved**" in md
    line = next(x for x in md.splitlines() if x.startswith("**mlp train**, PyTorch at train.batch_size=256"))
    assert "batch_size=256 is faster" in line and "= 1.50x" in line  # 1.5x per doubling, paired round by round
    assert "![Training samples/s against train.batch_size" in md and (results / "figures" / "settings.png").is_file()


def test_a_gpu_batch_size_sweep_shows_memory_and_the_thread_sweep_says_it_was_skipped(results):
    import shutil
    shutil.rmtree(results / "bench")
    bench_records(results, vary=[512], gpu=True)
    md = run_report(results)
    header = next(x for x in md.splitlines() if "train memory peak MiB" in x)
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {(r[0], r[1], r[2]): r for line in md.splitlines()
            if len(r := [c.strip() for c in line.strip("|").split("|")]) == len(cols) and r[0] == "PyTorch"}
    mem = cols.index("train memory peak MiB")
    assert float(rows[("PyTorch", "mlp", "128")][mem]) == 228 and float(rows[("PyTorch", "mlp", "512")][mem]) == 612
    assert list(rows)[:2] == [("PyTorch", "mlp", "128"), ("PyTorch", "mlp", "512")]  # each model's values in order
    assert "## Thread scaling\n\nSkipped: the children ran on NVIDIA H100" in md
    stability = next(x for x in md.splitlines() if x.startswith("**Machine stability**"))
    assert "device speedometer (a matmul on the GPU)" in md and "threads" not in stability
    recs = json.loads((results / "bench" / "records.json").read_text())["records"]
    n = len({(m["kind"], m["round"], m["arm"]) for m in recs if m["host_calib_before_gflops"] == 150})  # children
    assert f"not used to flag children): 150 GFLOP/s median, CV 0.0% over {2 * n} readings." in stability
    # the rounds alternate 6-s and 7-s children: where the bench's time goes
    assert ("A round child took (median): PyTorch 6.5 s: 2.5 s before its first measurement, 0.6 s on the "
            "speedometer, 3.0 s measuring (forked from a process that had imported it); TensorFlow 6.5 s: 2.5 s "
            "before its first measurement, 0.6 s on the speedometer, 3.0 s measuring (a new interpreter, imports "
            "included).") in stability
    # a setting's comparisons withheld: the first lines name each by its arm, not "mlp train" again and again
    path = results / "bench" / "records.json"
    rec = json.loads(path.read_text())
    for v in rec["verdicts"]:
        if v["setting"]:
            v |= {"winner": None, "text": "no verdict: 5 usable rounds; at least 6 are needed for a 95% interval"}
    path.write_text(json.dumps(rec))
    head = run_report(results).split("## Time to target accuracy")[0]
    assert ("got no verdict**: mlp train (PyTorch at train.batch_size=512), mlp train (TensorFlow at "
            "train.batch_size=512), mlp infer (PyTorch at train.batch_size=512)") in head
    # the GPU's own state: a throttled child and a shared GPU are named, so their rates are read for what they are
    assert (f"The GPU as each of {n} children ended (NVML): SM clock 1,980 MHz median [1,500–1,980], up to 62 °C, "
            "400 W median. **1 child(ren) ended with the SM clock more than 10% under the median** (PyTorch in round "
            "3): the GPU was held back") in stability
    assert ("**The GPU was shared**: up to 1 other process(es) computed on it as 1 child(ren) ended (TensorFlow in "
            "round 2); their rates are the share this run got.") in stability
    assert "infer samples/s" not in header  # inference does not vary with the training batch: its own table
    shutil.rmtree(results / "bench")
    bench_records(results)
    md = run_report(results)
    assert "host's CPU GEMM" not in md and "(NVML)" not in md  # on a CPU the host's GEMM is the speedometer itself


def test_inference_is_shown_at_every_batch_size_measured(results):
    md = run_report(results)
    lines = md.splitlines()
    at = next(i for i, x in enumerate(lines) if "batch 1, samples/s" in x)
    cols = [c.strip() for c in lines[at].strip("|").split("|")]
    row = next([c.strip() for c in x.strip("|").split("|")] for x in lines[at:] if "| PyTorch" in x and "| mlp" in x)
    # 6 rounds, jitter 1.00/1.01/1.02 in turn: median 1.01 x (200 at batch 1, 5000 at batch 512)
    assert cols[2:] == ["batch 1, samples/s", "batch 512, samples/s"]
    assert [float(v.replace(",", "")) for v in row[2:]] == pytest.approx([202, 5050])


def test_the_equivalence_table_shows_whether_both_cells_ran_on_the_same_device_precision_and_threads(results):
    run = results / "runs" / "tensorflow-cnn" / "run.json"
    run.write_text(json.dumps(json.loads(run.read_text()) | {"device": "NVIDIA H200"}))  # a GPU beside a CPU
    md = run_report(results)
    lines = md[md.index("## Equivalence evidence"):].splitlines()
    head = [c.strip() for c in next(x for x in lines if x.startswith("| model")).strip("|").split("|")]
    rows = {r[0]: dict(zip(head, r)) for r in ([c.strip() for c in x.strip("|").split("|")] for x in lines
                                               if x.startswith(("| mlp", "| cnn")))}
    assert [rows[m]["same device"] for m in ("mlp", "cnn")] == ["True", "False"]
    assert {rows[m][k] for m in ("mlp", "cnn") for k in ("same precision", "same threads")} == {"True"}


def test_a_table_prints_its_numbers_as_the_report_formats_them(tmp_path):
    # tabulate re-parsed formatted numbers: a column of 8,857 and 909.1 came out as 8857 and 909.1
    from pipeline.report import render
    df = pd.DataFrame({"model": ["mlp", "cnn"], "batch 1, samples/s": [8857.0, 909.1], "seeds": [6, 1],
                       "time [range]": ["1.4 [1.2–1.8]", "1.0 [0.7–1.1]"]})
    head, rule, *rows = render.markdown([("table", df)], tmp_path).strip().splitlines()
    assert [[c.strip() for c in r.strip("|").split("|")] for r in rows] == [["mlp", "8,857", "6", "1.4 [1.2–1.8]"],
                                                                          ["cnn", "909.1", "1", "1.0 [0.7–1.1]"]]
    assert [c.startswith(":") for c in rule.strip("|").split("|")] == [True, False, False, True]  # text left


def test_a_train_stage_gap_on_a_steady_machine_is_put_down_to_the_loop_or_the_bench_and_on_a_noisy_one_to_drift(
        results):
    """The fixture's train stage ran at 4,321 samples/s overall and 301 after its first evaluation, its bench at
    ~1,000: a gap. Its speedometer moved ~1% over the run, which cannot explain it; at 30% it can."""
    md = run_report(results)
    evidence = next(x for x in md.splitlines() if x.startswith("Speed evidence:"))
    assert "calibration GEMM" in evidence  # on a CPU the speedometer is the host's GEMM
    path, hist = results / "bench" / "records.json", results / "runs" / "torch-mlp" / "history.tsv"
    rec = json.loads(path.read_text())
    held = f"while the speedometer held (CV {rec['calibration']['cv_pct']:.1f}%)"
    assert f"{held}: the gap is the train loop's work around its steps" in md  # steady training slower than bench
    assert "this machine's speed drifts" not in md
    h = pd.read_csv(hist, sep="\t")
    h.assign(train_s=[4.0, 4.5, 5.0]).to_csv(hist, sep="\t", index=False)  # steady 2,560/s: faster than the bench
    assert f"{held}: the bench's timed steps ran slower" in run_report(results)
    rec["calibration"]["cv_pct"] = 30.0
    path.write_text(json.dumps(rec))
    md = run_report(results)
    assert "this machine's speed drifts" in md and "the speedometer held" not in md


def test_the_page_renders_the_report_s_markdown_and_shows_markup_in_its_text_as_text():
    from pipeline.report import render
    blocks = [("h1", "run on `digits`"), ("p", "**mlp**: PyTorch is faster; reason: a < b & <script>x</script>"),
              ("pre", "x <y>")]
    page = render.page(blocks, "t")
    assert "<h1>run on <code>digits</code></h1>" in page
    assert ("<p><strong>mlp</strong>: PyTorch is faster; reason: a &lt; b &amp; &lt;script&gt;x&lt;/script&gt;</p>"
            in page)
    assert "<pre>x &lt;y&gt;</pre>" in page and "<script>" not in page
    assert render.markdown(blocks, Path.cwd()).startswith("# run on `digits`\n\n**mlp**: PyTorch is faster")


def test_a_ranking_prints_the_figure_it_orders_by(monkeypatch):
    from types import SimpleNamespace

    from pipeline.records import Cell
    from pipeline.report import headline
    bench = {"torch": "0.9", "tensorflow": "0.4", "jax": "—"}  # JAX left no bench rate: its own stage's time
    monkeypatch.setattr(headline, "_at_bench_speed", lambda r, c: bench[c.framework])
    monkeypatch.setattr(headline, "time_to_target_verdict", lambda r, a, b: SimpleNamespace(text="v"))
    done = lambda t: SimpleNamespace(time_to_target_s=t, target_val_acc=0.97, diverged_seeds=0)  # noqa: E731
    r = SimpleNamespace(frameworks=["torch", "tensorflow", "jax"],
                        train={Cell("torch", "mlp"): done(0.1), Cell("tensorflow", "mlp"): done(0.3),
                               Cell("jax", "mlp"): done(0.8)})
    # PyTorch's own stage took 0.1 s, but the ranking is by the bench's rate: the line shows that figure
    assert headline.ranking(r, "mlp") == ("**mlp**, time to target: TensorFlow (0.4 s to 0.97 at bench speed) "
                                          "before JAX (0.8 s to 0.97) before PyTorch (0.9 s to 0.97 at bench speed); "
                                          "TensorFlow vs JAX: v; PyTorch vs JAX: v")
