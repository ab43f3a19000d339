"""The one place that knows params.yaml's shape: load, validate, return typed dataclasses.

Defaults live in params.yaml only; this module holds types and allowed ranges. Every stage calls `load()`
first, so a bad key stops it before it writes anything, with one line naming the key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

FRAMEWORKS = ("torch", "tensorflow")
MODELS = ("mlp", "cnn")
DATASETS = ("mnist", "fashion-mnist", "idx", "digits")


class ParamsError(ValueError):
    """A params.yaml problem; the message is one line naming the key."""


# Per-field checks: (predicate, what is allowed). Keys are "section.field" or "field".
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "threads": (lambda v: v >= 0, "an integer >= 0"),
    "frameworks": (lambda v: len(v) > 0 and set(v) <= set(FRAMEWORKS) and len(set(v)) == len(v),
                   f"a non-empty list of distinct names from {list(FRAMEWORKS)}"),
    "models": (lambda v: len(v) > 0 and set(v) <= set(MODELS) and len(set(v)) == len(v),
               f"a non-empty list of distinct names from {list(MODELS)}"),
    "data.timeout_s": (lambda v: v > 0, "a number > 0"),
    "data.retries": (lambda v: v >= 1, "an integer >= 1"),
    "data.val_fraction": (lambda v: 0 < v <= 0.5, "a number in (0, 0.5]"),
    "mlp.hidden": (lambda v: len(v) > 0 and all(h >= 1 for h in v), "a non-empty list of integers >= 1"),
    "mlp.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "cnn.channels": (lambda v: len(v) > 0 and all(c >= 1 for c in v), "a non-empty list of integers >= 1"),
    "cnn.kernel": (lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1 ('same' padding is symmetric)"),
    "cnn.dense": (lambda v: v >= 1, "an integer >= 1"),
    "cnn.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "schedule.mlp.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "schedule.mlp.lr": (lambda v: v > 0, "a number > 0"),
    "schedule.cnn.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "schedule.cnn.lr": (lambda v: v > 0, "a number > 0"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "train.beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "train.beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "train.eps": (lambda v: v > 0, "a number > 0"),
    "train.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.repeats": (lambda v: v >= 1, "an integer >= 1"),
    "bench.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "bench.infer_batch_sizes": (lambda v: len(v) > 0 and all(b >= 1 for b in v), "a non-empty list of integers >= 1"),
    "bench.warmup": (lambda v: v >= 1, "an integer >= 1 (the first calls include tracing/compilation)"),
    "bench.steps": (lambda v: v >= 1, "an integer >= 1"),
    "bench.repeats": (lambda v: v >= 3, "an integer >= 3 (a spread needs several repeats)"),
    "bench.latency_calls": (lambda v: v >= 20, "an integer >= 20 (p95/p99 need enough calls)"),
    "bench.compile": (lambda v: len(v) > 0 and len(set(v)) == len(v), "a non-empty list of distinct booleans"),
    "bench.thread_counts": (lambda v: all(t >= 1 for t in v), "a list of integers >= 1"),
    "bench.matmul_size": (lambda v: v >= 64, "an integer >= 64"),
    "loaders.workers": (lambda v: len(v) > 0 and all(w >= 0 for w in v) and len(set(v)) == len(v),
                        "a non-empty list of distinct integers >= 0"),
    "loaders.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "loaders.shift": (lambda v: v >= 0, "an integer >= 0"),
    "loaders.prefetch": (lambda v: v >= 1, "an integer >= 1"),
    "loaders.warmup": (lambda v: v >= 1, "an integer >= 1 (worker start-up is not timed)"),
    "loaders.batches": (lambda v: v >= 1, "an integer >= 1"),
    "loaders.repeats": (lambda v: v >= 3, "an integer >= 3 (a spread needs several repeats)"),
}


@dataclass(frozen=True)
class Data:
    name: Literal["mnist", "fashion-mnist", "idx", "digits"]
    mirrors: list[str]
    timeout_s: float
    retries: int
    val_fraction: float


@dataclass(frozen=True)
class MLP:
    hidden: list[int]
    activation: Literal["relu", "tanh", "sigmoid"]
    dropout: float


@dataclass(frozen=True)
class CNN:
    channels: list[int]
    kernel: int
    dense: int
    dropout: float


@dataclass(frozen=True)
class Schedule:
    epochs: int
    lr: float


@dataclass(frozen=True)
class Schedules:
    mlp: Schedule
    cnn: Schedule


@dataclass(frozen=True)
class Train:
    batch_size: int
    optimizer: Literal["sgd", "momentum", "adam"]
    momentum: float
    beta1: float
    beta2: float
    eps: float
    eval_batch_size: int
    repeats: int


@dataclass(frozen=True)
class Bench:
    batch_size: int
    infer_batch_sizes: list[int]
    warmup: int
    steps: int
    repeats: int
    latency_calls: int
    compile: list[bool]
    keras_fit: bool
    thread_counts: list[int]
    matmul_size: int


@dataclass(frozen=True)
class Loaders:
    workers: list[int]
    batch_size: int
    shift: int
    pin_memory: bool
    persistent_workers: bool
    prefetch: int
    warmup: int
    batches: int
    repeats: int


@dataclass(frozen=True)
class Params:
    seed: int
    threads: int
    device: Literal["auto", "cpu", "cuda"]
    frameworks: list[str]
    models: list[str]
    data: Data
    mlp: MLP
    cnn: CNN
    schedule: Schedules
    train: Train
    bench: Bench
    loaders: Loaders


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + " | ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean (true/false)"}.get(tp, str(tp))


def _check_type(value: Any, tp: Any, key: str) -> Any:
    bad = ParamsError(f"params.yaml: {key}: expected {_type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_check_type(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:  # YAML booleans are ints in Python; refuse them
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported field type {tp}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"params.yaml: {prefix}{unknown[0]}: unknown key (allowed here: {', '.join(names)})")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"params.yaml: {prefix}{missing[0]}: missing key")
    values = {}
    for name in names:
        key, tp = prefix + name, hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], key + ".")
            continue
        value = _check_type(raw[name], tp, key)
        if key in _RANGES and not _RANGES[key][0](value):
            raise ParamsError(f"params.yaml: {key}: expected {_RANGES[key][1]}, got {raw[name]!r}")
        values[name] = value
    return cls(**values)


def parse(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) and return typed params."""
    p = _build(Params, raw, "")
    if p.data.name == "idx" and not p.data.mirrors:
        raise ParamsError("params.yaml: data.mirrors: data.name 'idx' has no built-in mirrors; list at least one")
    for m in p.data.mirrors:
        scheme = m.split("://", 1)[0].lower() if "://" in m else ""
        if scheme not in ("", "http", "https", "file"):
            raise ParamsError(f"params.yaml: data.mirrors: {m!r}: scheme {scheme!r} refused "
                              "(allowed: http, https, file or a local directory)")
    from pipeline import spec  # local import: spec imports nothing from here at module level

    shape = spec.DATA_SHAPES.get(p.data.name)  # None for idx: checked again once the data is prepared
    for model in p.models if shape else []:  # a model that cannot work is a params error, before training
        spec.from_params(p, model, shape)
    return p


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ParamsError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    return parse(raw)
