"""The benchmark harness on tiny settings: well-formed, sane numbers, not speed."""
import math

import numpy as np
import pytest

from pipeline import bench, loaders, params, spec as specs
from pipeline import torch_backend as tb
from tests.conftest import raw_params

tb.setup(1, "cpu", 0)
P = params.parse(raw_params(**{"bench.warmup": 1, "bench.steps": 2, "bench.repeats": 3, "bench.latency_calls": 20,
                               "bench.infer_batch_sizes": [1, 16], "bench.batch_size": 8, "bench.matmul_size": 64,
                               "bench.compile": [False]}))
SPEC = specs.mlp((8, 8, 1), 10, [16], "relu", 0.1)
OPTIM = specs.Optim("adam", 1e-3, 0.9, 0.9, 0.999, 1e-8)


def finite_positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_bench_rows_are_complete_and_sane():
    x = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype(np.float32)  # fewer than a batch: tiled
    rows, peak = bench.bench(tb, SPEC, OPTIM, x, np.arange(10) % 10, P.bench, 1, ["eager"])
    assert finite_positive(peak)
    kinds = [(r["phase"], r["batch_size"]) for r in rows]
    assert kinds == [("matmul", 64), ("train", 8), ("infer", 1), ("infer", 16), ("latency", 1)]
    for r in rows:
        assert r["status"] == "ok"
        if r["phase"] in ("train", "infer"):
            assert all(finite_positive(r[k]) for k in ("samples_per_s", "step_time_ms_median", "pct_of_peak"))
            assert r["samples_per_s_q1"] <= r["samples_per_s"] <= r["samples_per_s_q3"]
            assert r["repeats"] == 3
        if r["phase"] == "latency":
            assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"] <= r["latency_ms_p99"]
    head = bench.headline(rows, "eager", P.bench, peak)
    for key in ("train_samples_per_s", "train_step_time_ms_median", "train_pct_of_peak", "infer_samples_per_s",
                "latency_ms_p50", "latency_ms_p99", "matmul_gflops"):
        assert finite_positive(head[key]), key
    assert head["infer_samples_per_s"] == rows[3]["samples_per_s"]  # the largest inference batch


def test_unavailable_variant_is_recorded_not_fatal(monkeypatch):
    real = tb.train_timings

    def fails_for_compile(model, optim, data, variant, *a):
        if variant == "compile":
            raise RuntimeError("no C++ compiler found\nsecond line")
        return real(model, optim, data, variant, *a)
    monkeypatch.setattr(tb, "train_timings", fails_for_compile)
    x = np.zeros((32, 8, 8, 1), np.float32)
    rows, _ = bench.bench(tb, SPEC, OPTIM, x, np.arange(32) % 10, P.bench, 1, ["eager", "compile"])
    bad = [r for r in rows if r["variant"] == "compile"]
    assert bad == [{"phase": "train", "variant": "compile", "batch_size": 8, "threads": 1, "status": "unsupported",
                    "reason": "RuntimeError: no C++ compiler found"}]
    assert any(r["variant"] == "eager" and r["phase"] == "train" and r["status"] == "ok" for r in rows)


def test_loader_sweep_and_best_setting():
    lp = params.parse(raw_params(**{"loaders.workers": [0, 1], "loaders.warmup": 1, "loaders.batches": 2,
                                    "loaders.repeats": 3, "loaders.batch_size": 8})).loaders
    raw = {"x_train": np.random.default_rng(0).integers(0, 255, (40, 8, 8)).astype(np.uint8),
           "y_train": np.arange(40) % 10, "mean": np.float32(0.5), "std": np.float32(0.3)}
    rows = loaders.sweep(tb, raw, lp, {"mlp": (SPEC, OPTIM)}, seed=0)
    assert [(r["workers"], r["what"]) for r in rows] == [("0", "loader"), ("0", "train-mlp"), ("1", "loader"),
                                                          ("1", "train-mlp")]
    assert all(finite_positive(r["samples_per_s"]) and r["repeats"] == 3 for r in rows)
    s = loaders.summarise(rows)
    best = max((r for r in rows if r["what"] == "loader"), key=lambda r: r["samples_per_s"])
    assert s["loader_best_workers"] == best["workers"]
    assert s["loader_best_speedup_x"] == pytest.approx(best["samples_per_s"] / rows[0]["samples_per_s"])


def test_torch_loader_batches_are_normalised_and_shifted():
    imgs = np.zeros((16, 6, 6), np.uint8)
    imgs[:, 2:4, 2:4] = 255
    it = tb.make_loader(imgs, np.zeros(16), 0.0, 1.0, 4, 0, 1, 0, False, False, 2)
    xb, yb = next(it)
    assert tuple(xb.shape) == (4, 1, 6, 6) and xb.max() == 1.0 and xb.sum() == 4 * 4  # shifted, never cropped
    corners = {int(img.flatten().argmax()) for _ in range(5) for img in next(it)[0][:, 0]}
    assert len(corners) > 1  # the block moved: the random shift is applied per sample
    assert corners <= {r * 6 + c for r in (1, 2, 3) for c in (1, 2, 3)}  # by at most 1 pixel
