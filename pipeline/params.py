"""params.yaml's schema: pydantic models with every rule on its field; unknown keys are errors.

Defaults live in params.yaml only; this module holds types, ranges and choices. Every stage calls `load()` first,
so a bad key stops it before it writes anything, in one line naming the key (worded by validate.message from the
field's own constraints, so a rule and its message cannot drift apart): `params.yaml: train.batch_size: expected an
integer >= 1, got 0`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator

from pipeline import spec
from pipeline.backends import FRAMEWORKS, cpu_threads
from pipeline.data.datasets import DATASETS
from pipeline.errors import ParamsError
from pipeline.probe import telemetry
from pipeline.validate import Distinct, Odd, cross, message

DATASET_NAMES = tuple(DATASETS)

Count = Annotated[int, Field(ge=1)]
Fraction01 = Annotated[float, Field(ge=0, lt=1)]  # a probability or decay that must stay below 1
Positive = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default); no int->str or "1"->1
    # coercion; NaN/inf refused; frozen so no stage edits the run's params.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Data(_Section):
    name: Literal[DATASET_NAMES]
    mirrors: list[str]
    timeout_s: Positive
    retries: Count
    val_fraction: Annotated[float, Field(gt=0, le=0.5)]

    @model_validator(mode="after")
    def _mirrors_usable(self) -> "Data":
        if self.name == "idx" and not self.mirrors:
            raise cross("data.mirrors", "data.name 'idx' has no built-in mirrors; list at least one")
        for m in self.mirrors:
            scheme = m.split("://", 1)[0].lower() if "://" in m else ""
            if scheme not in ("", "http", "https", "file"):
                raise cross("data.mirrors", f"{m!r}: scheme {scheme!r} refused "
                                             "(allowed: http, https, file or a local directory)")
        return self


class MLP(_Section):
    hidden: Annotated[list[Count], Field(min_length=1)]
    activation: Literal[spec.ACTIVATIONS]
    dropout: Fraction01


class CNN(_Section):
    channels: Annotated[list[Count], Field(min_length=1)]
    kernel: Annotated[int, Field(ge=1, description="'same' padding is symmetric"), Odd]
    dense: Count
    dropout: Fraction01


class Schedule(_Section):
    epochs: Count
    lr: Positive
    warmup: Annotated[float, Field(ge=0)]
    decay: Literal["none", "cosine", "linear"]


def _per(names: tuple[str, ...], field_type: Any, name: str, base: type | None = None) -> type:
    """A section with one field of `field_type` per name of a list (models, datasets), so that list stays the one
    place its names are written; a name with a dash is its own alias (fashion-mnist)."""
    return create_model(name, __base__=base or _Section,
                        **{n.replace("-", "_"): (field_type, Field(alias=n)) for n in names})


Accuracy = Annotated[float, Field(gt=0, le=1)]
Schedules = _per(spec.MODELS, Schedule, "Schedules")
Targets = _per(spec.MODELS, Accuracy, "Targets")


class _ByData(_Section):
    def of(self, dataset: str) -> Any:
        return getattr(self, dataset.replace("-", "_"))


TargetsByData = _per(DATASET_NAMES, Targets, "TargetsByData", _ByData)


# train's `auto`, one value per run, by whether it uses a GPU (README "On a GPU"). batch_size: 512 met the targets in
# a third of 128's time there. repeats: a GPU seed costs seconds, so enough seeds for their own paired time-to-target
# verdict (verdict.min_rounds, a test checks); a CPU seed costs minutes of the budget, the bench's speed carries it.
AUTO = {"batch_size": {False: 128, True: 512}, "repeats": {False: 1, True: 6}}


class Train(_Section):
    batch_size: Annotated[int, Field(ge=1, description="or auto: 128 on a CPU, 512 where a GPU is used")]
    optimizer: Literal["sgd", "momentum", "adam"]
    momentum: Fraction01
    beta1: Fraction01
    beta2: Fraction01
    eps: Positive
    eval_batch_size: Count
    eval_every_samples: Count
    stop_at_target: bool
    repeats: Annotated[int, Field(ge=1, description="or auto: 1 on a CPU, 6 on a GPU")]

    def eval_steps(self) -> int:
        """train.eval_every_samples in optimizer steps (at least one): the same samples seen at any batch size."""
        return max(1, round(self.eval_every_samples / self.batch_size))


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # how matmuls and convolutions compute, alike in every framework
# Opt-in variants (one child per framework after the rounds): each framework's way to do it, or a reason it has none
VARIANTS = ("compile", "channels_last", "cuda_graphs", "fit")
VARY = ("none", "train.batch_size", "threads")  # settings that change how a step runs, not what it computes


class Bench(_Section):
    # 6 rounds is the fewest for which the median ratio's exact interval reaches 95% (verdict.min_rounds).
    rounds: Annotated[int, Field(ge=6, description="an exact 95% interval of a median needs 6 values")]
    max_s: Positive
    control: bool
    fork: bool
    min_effect: Fraction01
    max_drift: Annotated[float, Field(gt=0, le=1)]
    max_calib_cv: Annotated[float, Field(gt=0)]
    calib_s: Annotated[float, Field(gt=0, le=60)]
    infer_batch_sizes: Annotated[list[Count], Field(min_length=1)]
    warmup: Annotated[int, Field(ge=1, description="the first calls include tracing/compilation")]
    steps: Count
    repeats: Annotated[int, Field(ge=3, description="a median of calm repeats needs a few")]
    repeat_max_s: Positive
    min_repeat_s: Annotated[float, Field(ge=0, le=10, description="seconds; 0 = bench.steps as they are")]
    latency_calls: Annotated[int, Field(ge=20, description="p95/p99 need enough calls")]
    variants: Annotated[list[Literal[VARIANTS]], Distinct]
    thread_counts: list[Count]
    # A setting that changes only how a step runs, measured at other values as extra arms of the same rounds.
    vary: Literal[VARY]
    vary_values: Annotated[list[Count], Distinct]

    @model_validator(mode="after")
    def _vary_has_values(self) -> "Bench":
        if (self.vary == "none") != (not self.vary_values):
            raise cross("bench.vary_values", "list the values of bench.vary to measure (and only with a bench.vary)")
        return self


def _auto_workers(value: Any) -> Any:
    """`auto`: no worker, then powers of two up to this machine's cores, and the core count itself."""
    if value != "auto":
        return value
    cores = cpu_threads(0)
    return sorted({0, cores} | {2 ** k for k in range(cores.bit_length()) if 2 ** k <= cores})


class Loaders(_Section):
    workers: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_auto_workers), Distinct,
                       Field(min_length=1, description="or auto: 0, powers of two up to the cores, the cores")]
    batch_size: Count
    shift: Annotated[int, Field(ge=0)]
    pin_memory: bool
    persistent_workers: bool
    prefetch: Count
    warmup: Annotated[int, Field(ge=1, description="worker start-up is not timed")]
    batches: Count
    repeats: Annotated[int, Field(ge=3, description="a spread needs several repeats")]


class Scale(_Section):
    workers: Annotated[list[Count], Distinct]  # empty: the stage measures nothing and says how to opt in
    rounds: Annotated[int, Field(ge=6, description="an exact 95% interval of a median needs 6 values")]
    warmup: Annotated[int, Field(ge=1, description="the first steps include tracing and the first collectives")]
    steps: Count
    repeats: Count
    allreduce_calls: Count
    timeout_s: Positive
    # The rendezvous host: this machine's workers meet there (torchrun's rdzv endpoint, TF_CONFIG's first worker).
    host: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
                               description="a host name or IPv4 address: letters, digits, dots, hyphens")]
    port: Annotated[int, Field(ge=1024, le=65535 - 64, description="unprivileged, room for one port per worker")]


class Params(_Section):
    # NumPy seeds must be >= 0; 2**32 - 1 keeps every framework's seeding function happy.
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    threads: Annotated[int, Field(ge=0)]
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal[PRECISIONS]
    frameworks: Annotated[list[Literal[FRAMEWORKS]], Field(min_length=1), Distinct]
    models: Annotated[list[Literal[spec.MODELS]], Field(min_length=1), Distinct]
    data: Data
    mlp: MLP
    cnn: CNN
    schedule: Schedules
    target: TargetsByData
    train: Train
    bench: Bench
    loaders: Loaders
    scale: Scale

    @model_validator(mode="before")
    @classmethod
    def _auto_train(cls, raw: Any) -> Any:
        # resolved here, where `device` is known, so every stage (and the shard check below) sees one number
        train = raw.get("train") if isinstance(raw, dict) else None
        if not isinstance(train, dict) or "auto" not in (train.get(k) for k in AUTO):
            return raw
        gpu = telemetry.gpu_used(raw.get("device"))
        return raw | {"train": train | {k: AUTO[k][gpu] for k in AUTO if train.get(k) == "auto"}}

    @model_validator(mode="after")
    def _models_fit_the_images(self) -> "Params":
        shape = DATASETS[self.data.name].shape  # None for idx: checked again once the data is prepared
        for model in self.models if shape else []:
            try:
                _build_spec(self, model, shape, 10)
            except ValueError as e:
                raise cross(_SPEC_KEY[model], str(e)) from None
        return self

    @model_validator(mode="after")
    def _shards_are_equal(self) -> "Params":
        # equal shards: the mean of the workers' shard means is then the global batch's mean (same maths at any N)
        uneven = [n for n in self.scale.workers if self.train.batch_size % n]
        if uneven:
            raise cross("scale.workers", f"{uneven[0]} workers cannot split train.batch_size {self.train.batch_size} "
                        "into equal shards; use counts that divide it")
        return self


_SPEC_KEY = {"mlp": "mlp.hidden", "cnn": "cnn.channels"}  # the key to name when a model cannot be built


def _build_spec(p: Params, model: str, in_shape: tuple[int, int, int], classes: int) -> spec.ModelSpec:
    if model == "mlp":
        return spec.mlp(in_shape, classes, p.mlp.hidden, p.mlp.activation, p.mlp.dropout)
    return spec.cnn(in_shape, classes, p.cnn.channels, p.cnn.kernel, p.cnn.dense, p.cnn.dropout)


def model_spec(p: Params, model: str, in_shape: tuple[int, int, int], classes: int = 10) -> spec.ModelSpec:
    """The spec of `model` for images of `in_shape` (H, W, C); a spec that cannot work is a ParamsError."""
    try:
        return _build_spec(p, model, in_shape, classes)
    except ValueError as e:
        raise ParamsError(f"params.yaml: {_SPEC_KEY[model]}: {e}") from None


def optim(p: Params, model: str) -> spec.Optim:
    """The optimizer maths of `model`'s training: train.* hyperparameters and the model's learning rate."""
    t, s = p.train, getattr(p.schedule, model)
    return spec.Optim(t.optimizer, s.lr, t.momentum, t.beta1, t.beta2, t.eps, s.warmup, s.decay)


def networks(p: Params, in_shape: tuple[int, int, int], classes: int) -> dict[str, tuple[spec.ModelSpec, spec.Optim]]:
    """Every model of the run: its spec for these images and its optimizer maths."""
    return {m: (model_spec(p, m, in_shape, classes), optim(p, m)) for m in p.models}


def parse(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) and return typed, frozen params."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: top level: expected a mapping, got {raw!r}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(message(e.errors()[0], raw, Params)) from None


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ParamsError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = f" line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise ParamsError(f"{path}:{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    return parse(raw)


def override(raw: dict, **dotted: Any) -> dict:
    """params.yaml's mapping with dotted keys replaced, as `dvc exp run -S` does; a copy, not validated."""
    raw = copy.deepcopy(raw)
    for key, value in dotted.items():
        *parents, last = key.split(".")
        d = raw
        for k in parents:
            d = d[k]
        d[last] = value
    return raw
