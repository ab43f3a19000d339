import subprocess
import sys

import pytest

from pipeline import params
from pipeline.errors import ParamsError
from tests.conftest import ROOT, raw_params, write_params


def test_repo_params_are_valid_and_typed():
    p = params.load(ROOT / "params.yaml")
    assert p.frameworks == ["torch", "tensorflow"] and p.models == ["mlp", "cnn"]
    assert isinstance(p.schedule.cnn.lr, float) and isinstance(p.train.eps, float)  # YAML 1.0e-8 is a float


def test_every_key_in_params_yaml_has_a_comment():
    lines = [l for l in (ROOT / "params.yaml").read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    uncommented = [l for l in lines if "#" not in l and not l.rstrip().endswith(":")]
    assert uncommented == []


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "params.yaml: bogus: unknown key"),
    ({"train.lr_typo": 0.1}, "params.yaml: train.lr_typo: unknown key"),
    ({"threads": "two"}, "params.yaml: threads: expected integer, got 'two'"),
    ({"threads": True}, "params.yaml: threads: expected integer"),
    ({"threads": -1}, "params.yaml: threads: expected an integer >= 0"),
    ({"device": "tpu"}, "params.yaml: device: expected one of auto | cpu | cuda"),
    ({"frameworks": ["torch", "mxnet"]}, "params.yaml: frameworks: expected a non-empty list of distinct names"),
    ({"frameworks": []}, "params.yaml: frameworks: expected a non-empty list"),
    ({"models": ["mlp", "mlp"]}, "params.yaml: models: expected a non-empty list of distinct names"),
    ({"data.name": "cifar"}, "params.yaml: data.name: expected one of mnist | fashion-mnist | idx | digits"),
    ({"data.val_fraction": 0.9}, "params.yaml: data.val_fraction: expected a number in (0, 0.5]"),
    ({"data.mirrors": ["ftp://example.org/mnist/"]}, "params.yaml: data.mirrors: 'ftp://example.org/mnist/': scheme 'ftp' refused"),
    ({"data.name": "idx"}, "params.yaml: data.mirrors: data.name 'idx' has no built-in mirrors"),
    ({"mlp.hidden": []}, "params.yaml: mlp.hidden: expected a non-empty list of integers >= 1"),
    ({"mlp.hidden": [512, 0]}, "params.yaml: mlp.hidden: expected a non-empty list of integers >= 1"),
    ({"mlp.activation": "gelu"}, "params.yaml: mlp.activation: expected one of relu | tanh | sigmoid"),
    ({"mlp.dropout": 1.0}, "params.yaml: mlp.dropout: expected a number in [0, 1)"),
    ({"cnn.kernel": 4}, "params.yaml: cnn.kernel: expected an odd integer >= 1"),
    ({"cnn.channels": [8, 8, 8, 8, 8, 8]}, "params.yaml: cnn.channels: 6 conv blocks need 6 2x2 poolings, but a 28x28 image allows only 4"),
    ({"data.name": "digits", "cnn.channels": [8, 8, 8, 8]}, "but a 8x8 image allows only 3"),
    ({"schedule.cnn.epochs": 0}, "params.yaml: schedule.cnn.epochs: expected an integer >= 1"),
    ({"schedule.mlp.lr": 0}, "params.yaml: schedule.mlp.lr: expected a number > 0"),
    ({"train.optimizer": "adamw"}, "params.yaml: train.optimizer: expected one of sgd | momentum | adam"),
    ({"train.batch_size": 0}, "params.yaml: train.batch_size: expected an integer >= 1"),
    ({"bench.rounds": 5}, "params.yaml: bench.rounds: expected an integer >= 6 (an exact 95% interval of a median "
                          "needs 6 values), got 5"),
    ({"bench.variants": ["xla"]}, "params.yaml: bench.variants: expected a list of distinct names from "
                                  "['compile', 'channels_last', 'cuda_graphs', 'fit'], got ['xla']"),
    ({"bench.vary": "train.lr", "bench.vary_values": [1]},
     "params.yaml: bench.vary: expected one of none | train.batch_size | threads, got 'train.lr'"),
    ({"bench.vary": "threads"}, "params.yaml: bench.vary_values: list the values of bench.vary to measure"),
    ({"bench.vary_values": [64]}, "params.yaml: bench.vary_values: list the values of bench.vary to measure (and only "
                                  "with a bench.vary)"),
    ({"bench.max_s": 0}, "params.yaml: bench.max_s: expected a number > 0"),
    ({"loaders.workers": [0, -2]}, "params.yaml: loaders.workers: expected a non-empty list of distinct integers >= 0"),
    ({"train": 3}, "params.yaml: train: expected a mapping, got 3"),
    ({"seed": -1}, "params.yaml: seed: expected an integer in [0, 4294967295], got -1"),
    ({"train.eps": float("nan")}, "params.yaml: train.eps: expected a number > 0, got nan"),
    ({"data.timeout_s": "30"}, "params.yaml: data.timeout_s: expected number, got '30'"),
    ({"bench.variants": ["fit", "fit"]}, "params.yaml: bench.variants: expected a list of distinct names from "
                                         "['compile', 'channels_last', 'cuda_graphs', 'fit'], got ['fit', 'fit']"),
    ({"train.repeats": 0}, "params.yaml: train.repeats: expected an integer >= 1 (or auto: 1 on a CPU, 6 on a GPU)"),
    ({"train.repeats": "many"}, "params.yaml: train.repeats: expected an integer >= 1 (or auto: 1 on a CPU, 6 on a "
                                "GPU), got 'many'"),
    ({"train.batch_size": "big"}, "params.yaml: train.batch_size: expected an integer >= 1 (or auto: 128 on a CPU, "
                                  "512 where a GPU is used), got 'big'"),
    ({"bench.warmup": 0}, "params.yaml: bench.warmup: expected an integer >= 1 (the first calls include tracing"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ParamsError) as e:
        params.parse(raw_params(**overrides))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_key_is_named():
    raw = raw_params()
    del raw["train"]["eps"]
    with pytest.raises(ParamsError, match=r"^params.yaml: train.eps: missing key$"):
        params.parse(raw)


def test_invalid_yaml_names_the_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("seed: 0\nthreads: [1, 2\n")
    with pytest.raises(ParamsError, match=r"params.yaml: line \d+: invalid YAML"):
        params.load(f)


@pytest.mark.parametrize("stage", ["download", "prepare", "env"])
def test_stage_with_bad_params_exits_nonzero_with_one_line_and_writes_nothing(tmp_path, stage):
    pfile = write_params(tmp_path / "params.yaml", **{"data.val_fraction": 2})
    out = tmp_path / "out"
    args = {"download": ["--out", str(out)], "prepare": ["--raw", str(tmp_path), "--out", str(out)],
            "env": ["--out", str(out)]}[stage]
    r = subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", *args, "--params", str(pfile)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: params.yaml: data.val_fraction: expected a number in (0, 0.5], got 2"
    assert not out.exists()


def _rules() -> list[tuple[str, object]]:
    """(key, a value breaking one rule) for every constraint written on a params field, read off the schema."""
    import typing

    import annotated_types as at
    from pydantic import BaseModel

    out = []

    def walk(model, prefix, defaults):
        for name, info in model.model_fields.items():
            name = info.alias or name  # params.yaml's spelling, e.g. fashion-mnist
            key, tp, meta, default = prefix + name, info.annotation, info.metadata, defaults[name]
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, key + ".", default)
                continue
            out.append((key, 123 if tp is str else "not-a-" + name))  # the type rule
            if tp is str:  # a string's own rules: its pattern and its length
                out.extend([(key, "not a host!")] * any(getattr(m, "pattern", None) for m in meta))
                out.extend([(key, "")] * any(isinstance(m, at.MinLen) for m in meta))
            if typing.get_origin(tp) is typing.Literal:
                out.append((key, "bogus"))
            if typing.get_origin(tp) is list:
                item, item_meta = typing.get_args(tp)[0], []
                if typing.get_origin(item) is typing.Annotated:
                    item, *extra = typing.get_args(item)
                    item_meta = [m for e in extra for m in getattr(e, "metadata", [e])]
                if any(isinstance(m, at.MinLen) for m in meta):
                    out.append((key, []))
                if params.Distinct in meta:
                    out.append((key, [default[0], default[0]] if default else [1, 1]))
                if typing.get_origin(item) is typing.Literal:
                    out.append((key, [*default, "bogus"]))
                for m in item_meta:
                    if isinstance(m, (at.Ge, at.Gt)):
                        out.append((key, [*default, (m.ge if isinstance(m, at.Ge) else m.gt) - 1]))
            for m in meta:
                if isinstance(m, at.Ge):
                    out.append((key, m.ge - 1 if isinstance(default, int) else m.ge - 0.01))
                elif isinstance(m, at.Gt):
                    out.append((key, m.gt))
                elif isinstance(m, at.Le):
                    out.append((key, m.le + 1 if isinstance(default, int) else m.le + 0.01))
                elif isinstance(m, at.Lt):
                    out.append((key, m.lt))
                elif m is params.Odd:
                    out.append((key, default + 1))
    walk(params.Params, "", raw_params())
    return out


RULES = _rules()


def test_the_schema_walk_finds_the_rules():
    keys = {k for k, _ in RULES}
    assert len(RULES) > 80 and {"seed", "cnn.kernel", "loaders.workers", "data.val_fraction"} <= keys
    assert ("cnn.kernel", 6) in RULES and ("seed", -1) in RULES and ("mlp.hidden", []) in RULES


@pytest.mark.parametrize("key, bad", RULES, ids=[f"{k}={v!r}" for k, v in RULES])
def test_every_rule_on_every_field_refuses_in_one_line_naming_the_key(key, bad):
    with pytest.raises(ParamsError) as e:
        params.parse(raw_params(**{key: bad}))
    msg = str(e.value)
    where = msg.split(": ")[1]
    assert msg.startswith("params.yaml: ") and ": expected " in msg and "\n" not in msg
    assert where == key or where.startswith(key + "[")  # a wrong-typed list item is named with its index
    if where == key:
        assert msg.endswith(f"got {bad!r}")


@pytest.mark.parametrize("cores, expected", [(1, [0, 1]), (2, [0, 1, 2]), (12, [0, 1, 2, 4, 8, 12]),
                                             (16, [0, 1, 2, 4, 8, 16])])
def test_loader_workers_auto_sweeps_up_to_this_machines_cores(monkeypatch, cores, expected):
    import os
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert params.parse(raw_params(**{"loaders.workers": "auto"})).loaders.workers == expected
    assert params.parse(raw_params(**{"loaders.workers": [0, 3]})).loaders.workers == [0, 3]  # a list stays


@pytest.mark.parametrize("device, gpus, expected, seeds", [("cpu", 1, 128, 1), ("auto", 0, 128, 1),
                                                           ("auto", 1, 512, 6), ("cuda", 0, 512, 6)])
def test_auto_batch_and_seeds_are_one_number_each_for_the_run_by_whether_it_uses_a_gpu(monkeypatch, device, gpus,
                                                                                       expected, seeds):
    from pipeline.measure import verdict
    from pipeline.probe import telemetry
    monkeypatch.setattr(telemetry, "gpu_count", lambda: gpus)
    p = params.parse(raw_params(**{"train.batch_size": "auto", "train.repeats": "auto", "device": device}))
    assert (p.train.batch_size, p.train.repeats) == (expected, seeds)
    # a GPU's seeds are enough for their own paired time-to-target verdict; the CPU's one leaves it to the bench
    assert params.AUTO["repeats"] == {False: 1, True: verdict.min_rounds()}
    mine = params.parse(raw_params(**{"train.batch_size": 64, "train.repeats": 3, "device": device})).train
    assert (mine.batch_size, mine.repeats) == (64, 3)  # a number is the user's, on any device
    # each key resolves alone: one set by the user leaves the other's auto to the device
    assert params.parse(raw_params(**{"train.batch_size": 64, "train.repeats": "auto",
                                      "device": device})).train.repeats == seeds
    # the shard check sees the resolved number: 3 workers cannot split it, and the error says which
    with pytest.raises(ParamsError, match=f"3 workers cannot split train.batch_size {expected} "):
        params.parse(raw_params(**{"train.batch_size": "auto", "device": device, "scale.workers": [1, 3]}))


@pytest.mark.parametrize("batch, steps", [(128, 100), (512, 25), (100, 128), (2048, 6), (40000, 1)])
def test_evaluations_fall_at_the_same_samples_seen_at_any_batch_size(batch, steps):
    p = params.parse(raw_params(**{"train.batch_size": batch, "train.eval_every_samples": 12800}))
    assert p.train.eval_steps() == steps
