"""The one place that knows params.yaml's shape: a pydantic schema, every rule written on its field.

Defaults live in params.yaml only; this module holds types, ranges and choices. Every stage calls `load()`
first, so a bad key stops it before it writes anything, with one line naming the key:
`params.yaml: train.batch_size: expected an integer >= 1, got 0`. The one-line text is derived from the
field's own constraints (`_expected`), so a rule and its message cannot drift apart.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types as at
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from pipeline import spec
from pipeline.errors import ParamsError

FRAMEWORKS = ("torch", "tensorflow")
MODELS = ("mlp", "cnn")


def _distinct(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError("repeated item")
    return v


def _odd(v: int) -> int:
    if v % 2 != 1:
        raise ValueError("even")
    return v


Distinct = AfterValidator(_distinct)  # markers the error text recognises (see _expected)
Odd = AfterValidator(_odd)

Count = Annotated[int, Field(ge=1)]
Fraction01 = Annotated[float, Field(ge=0, lt=1)]  # a probability or decay that must stay below 1
Positive = Annotated[float, Field(gt=0)]


def _cross(key: str, detail: str) -> PydanticCustomError:
    """A rule that spans fields: reported under `key` with its own detail text."""
    return PydanticCustomError("cross_field", "{key}: {detail}", {"key": key, "detail": detail})


class _Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default); no int->str or "1"->1
    # coercion; NaN/inf refused; frozen so no stage edits the run's params.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Data(_Section):
    name: Literal["mnist", "fashion-mnist", "idx", "digits"]
    mirrors: list[str]
    timeout_s: Positive
    retries: Count
    val_fraction: Annotated[float, Field(gt=0, le=0.5)]

    @model_validator(mode="after")
    def _mirrors_usable(self) -> "Data":
        if self.name == "idx" and not self.mirrors:
            raise _cross("data.mirrors", "data.name 'idx' has no built-in mirrors; list at least one")
        for m in self.mirrors:
            scheme = m.split("://", 1)[0].lower() if "://" in m else ""
            if scheme not in ("", "http", "https", "file"):
                raise _cross("data.mirrors", f"{m!r}: scheme {scheme!r} refused "
                                             "(allowed: http, https, file or a local directory)")
        return self


class MLP(_Section):
    hidden: Annotated[list[Count], Field(min_length=1)]
    activation: Literal["relu", "tanh", "sigmoid"]
    dropout: Fraction01


class CNN(_Section):
    channels: Annotated[list[Count], Field(min_length=1)]
    kernel: Annotated[int, Field(ge=1, description="'same' padding is symmetric"), Odd]
    dense: Count
    dropout: Fraction01


class Schedule(_Section):
    epochs: Count
    lr: Positive


class Schedules(_Section):
    mlp: Schedule
    cnn: Schedule


Accuracy = Annotated[float, Field(gt=0, le=1)]


class Targets(_Section):
    mlp: Accuracy
    cnn: Accuracy


class TargetsByData(_Section):
    mnist: Targets
    fashion_mnist: Targets = Field(alias="fashion-mnist")
    digits: Targets
    idx: Targets

    def of(self, dataset: str) -> Targets:
        return getattr(self, dataset.replace("-", "_"))


class Train(_Section):
    batch_size: Count
    optimizer: Literal["sgd", "momentum", "adam"]
    momentum: Fraction01
    beta1: Fraction01
    beta2: Fraction01
    eps: Positive
    eval_batch_size: Count
    eval_every: Count
    stop_at_target: bool
    repeats: Count


class Bench(_Section):
    # 6 rounds is the fewest for which the median ratio's exact interval reaches 95% (compare.min_rounds).
    rounds: Annotated[int, Field(ge=6, description="an exact 95% interval of a median needs 6 values")]
    control: bool
    min_effect: Annotated[float, Field(ge=0, lt=1)]
    max_drift: Annotated[float, Field(gt=0, le=1)]
    max_calib_cv: Annotated[float, Field(gt=0)]
    infer_batch_sizes: Annotated[list[Count], Field(min_length=1)]
    warmup: Annotated[int, Field(ge=1, description="the first calls include tracing/compilation")]
    steps: Count
    repeats: Count
    latency_calls: Annotated[int, Field(ge=20, description="p95/p99 need enough calls")]
    compile: Annotated[list[bool], Field(min_length=1), Distinct]
    keras_fit: bool
    thread_counts: list[Count]


class Loaders(_Section):
    workers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1), Distinct]
    batch_size: Count
    shift: Annotated[int, Field(ge=0)]
    pin_memory: bool
    persistent_workers: bool
    prefetch: Count
    warmup: Annotated[int, Field(ge=1, description="worker start-up is not timed")]
    batches: Count
    repeats: Annotated[int, Field(ge=3, description="a spread needs several repeats")]


class Params(_Section):
    # NumPy seeds must be >= 0; 2**32 - 1 keeps every framework's seeding function happy.
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    threads: Annotated[int, Field(ge=0)]
    device: Literal["auto", "cpu", "cuda"]
    frameworks: Annotated[list[Literal["torch", "tensorflow"]], Field(min_length=1), Distinct]
    models: Annotated[list[Literal["mlp", "cnn"]], Field(min_length=1), Distinct]
    data: Data
    mlp: MLP
    cnn: CNN
    schedule: Schedules
    target: TargetsByData
    train: Train
    bench: Bench
    loaders: Loaders

    @model_validator(mode="after")
    def _models_fit_the_images(self) -> "Params":
        shape = spec.DATA_SHAPES.get(self.data.name)  # None for idx: checked again once the data is prepared
        for model in self.models if shape else []:
            try:
                _build_spec(self, model, shape, 10)
            except ValueError as e:
                raise _cross(_SPEC_KEY[model], str(e)) from None
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
    t = p.train
    return spec.Optim(t.optimizer, getattr(p.schedule, model).lr, t.momentum, t.beta1, t.beta2, t.eps)


# --- one-line errors -------------------------------------------------------------------------------------------

_NOUNS = {int: "integer", float: "number", bool: "boolean (true/false)", str: "string"}
_TYPE_ERRORS = {"int_type": int, "float_type": float, "bool_type": bool, "string_type": str}


def _unwrap(tp: Any, meta: list) -> tuple[Any, list]:
    """Annotated[T, ...] -> (T, every constraint object, FieldInfo metadata flattened)."""
    meta = list(meta)
    while typing.get_origin(tp) is Annotated:
        tp, *extra = typing.get_args(tp)
        for m in extra:
            meta += getattr(m, "metadata", []) + ([m] if not hasattr(m, "metadata") else [])
            if getattr(m, "description", None):
                meta.append(("why", m.description))
    return tp, meta


def _bounds(meta: list) -> str:
    lo = next((("[", m.ge) if isinstance(m, at.Ge) else ("(", m.gt) for m in meta if isinstance(m, (at.Ge, at.Gt))),
              None)
    hi = next((("]", m.le) if isinstance(m, at.Le) else (")", m.lt) for m in meta if isinstance(m, (at.Le, at.Lt))),
              None)
    if lo and hi:
        return f" in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f" {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def _expected(tp: Any, meta: list, plural: bool = False) -> str:
    """What a field allows, in words, from its type and constraints: 'an odd integer >= 1', 'a number in (0, 0.5]'."""
    tp, meta = _unwrap(tp, meta)
    why = next((m[1] for m in meta if isinstance(m, tuple) and m[0] == "why"), None)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return f"names from {list(choices)}" if plural else "one of " + " | ".join(map(str, choices))
    if typing.get_origin(tp) is list:
        words = ["a"] + ["non-empty"] * any(isinstance(m, at.MinLen) for m in meta) + ["list of"]
        words += ["distinct"] * (Distinct in meta) + [_expected(typing.get_args(tp)[0], [], plural=True)]
        return " ".join(words)
    noun = _NOUNS.get(tp, str(tp)).split(" (")[0] if plural else _NOUNS.get(tp, str(tp))
    noun = ("odd " if Odd in meta else "") + noun + ("s" if plural else "")
    text = noun + _bounds(meta) + (f" ({why})" if why else "")
    return text if plural else ("an " if noun[0] in "aeiou" else "a ") + text


def _field(loc: tuple) -> tuple[Any, list, type | None]:
    """(annotation, metadata, enclosing model) of the field at a pydantic error location (list indices skipped)."""
    model: Any = Params
    tp, meta = Params, []
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {info.alias or name: info for name, info in getattr(model, "model_fields", {}).items()}
        if part not in fields:
            return None, [], model
        info = fields[part]
        tp, meta = info.annotation, info.metadata + ([("why", info.description)] if info.description else [])
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            model = tp
    return tp, meta, model


def _raw_at(raw: Any, loc: tuple) -> Any:
    for part in loc:
        raw = raw[part]
    return raw


def _message(err: dict, raw: Any) -> str:
    """One line for pydantic's first error, in this project's format."""
    kind, loc = err["type"], tuple(err["loc"])
    if kind == "cross_field":
        return f"params.yaml: {err['ctx']['key']}: {err['ctx']['detail']}"
    key = ".".join(str(p) for p in loc if not isinstance(p, int))
    if kind == "missing":
        return f"params.yaml: {key}: missing key"
    if kind == "extra_forbidden":
        _, _, model = _field(loc[:-1])
        allowed = [info.alias or name for name, info in model.model_fields.items()]
        return f"params.yaml: {key}: unknown key (allowed here: {', '.join(allowed)})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"params.yaml: {key or 'top level'}: expected a mapping, got {err['input']!r}"
    if kind in _TYPE_ERRORS:  # a wrong type is named where it sits, list index included
        where = key + "".join(f"[{p}]" for p in loc if isinstance(p, int))
        return f"params.yaml: {where}: expected {_NOUNS[_TYPE_ERRORS[kind]]}, got {err['input']!r}"
    field_loc = tuple(p for p in loc if not isinstance(p, int))  # a range or choice is the whole field's rule
    tp, meta, _ = _field(field_loc)
    return f"params.yaml: {key}: expected {_expected(tp, meta)}, got {_raw_at(raw, field_loc)!r}"


def parse(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) and return typed, frozen params."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: top level: expected a mapping, got {raw!r}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_message(e.errors()[0], raw)) from None


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
