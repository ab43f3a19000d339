"""The one-line params error text, derived from each field's own type and constraints.

What params.py's rules share: marker validators (Distinct, Odd), cross-field errors, and the one-line error
text, derived from a field's own type and constraints so that a rule and its message cannot drift apart:
`params.yaml: train.batch_size: expected an integer >= 1, got 0`.
"""
from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError


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


def cross(key: str, detail: str) -> PydanticCustomError:
    """A rule that spans fields: reported under `key` with its own detail text."""
    return PydanticCustomError("cross_field", "{key}: {detail}", {"key": key, "detail": detail})


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


def _why(meta: list) -> str | None:
    """The field's own words on its rule (its description, e.g. `or auto: ...`), if it has any."""
    return next((m[1] for m in meta if isinstance(m, tuple) and m[0] == "why"), None)


def _expected(tp: Any, meta: list, plural: bool = False) -> str:
    """What a field allows, in words, from its type and constraints: 'an odd integer >= 1', 'a number in (0, 0.5]'."""
    tp, meta = _unwrap(tp, meta)
    why = _why(meta)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return f"names from {list(choices)}" if plural else "one of " + " | ".join(map(str, choices))
    if typing.get_origin(tp) is list:
        words = ["a"] + ["non-empty"] * any(isinstance(m, at.MinLen) for m in meta) + ["list of"]
        words += ["distinct"] * (Distinct in meta) + [_expected(typing.get_args(tp)[0], [], plural=True)]
        return " ".join(words) + (f" ({why})" if why else "")
    noun = _NOUNS.get(tp, str(tp)).split(" (")[0] if plural else _NOUNS.get(tp, str(tp))
    noun = ("odd " if Odd in meta else "") + noun + ("s" if plural else "")
    text = noun + _bounds(meta) + (f" ({why})" if why else "")
    return text if plural else ("an " if noun[0] in "aeiou" else "a ") + text


def _field(root: type[BaseModel], loc: tuple) -> tuple[Any, list, type | None]:
    """(annotation, metadata, enclosing model) of the field at a pydantic error location (list indices skipped)."""
    model: Any = root
    tp, meta = root, []
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


def message(err: dict, raw: Any, root: type[BaseModel]) -> str:
    """One line for a pydantic error of `root` validating `raw`, in this project's format."""
    kind, loc = err["type"], tuple(err["loc"])
    if kind == "cross_field":
        return f"params.yaml: {err['ctx']['key']}: {err['ctx']['detail']}"
    key = ".".join(str(p) for p in loc if not isinstance(p, int))
    if kind == "missing":
        return f"params.yaml: {key}: missing key"
    if kind == "extra_forbidden":
        _, _, model = _field(root, loc[:-1])
        allowed = [info.alias or name for name, info in model.model_fields.items()]
        return f"params.yaml: {key}: unknown key (allowed here: {', '.join(allowed)})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"params.yaml: {key or 'top level'}: expected a mapping, got {err['input']!r}"
    field_loc = tuple(p for p in loc if not isinstance(p, int))  # a range or choice is the whole field's rule
    tp, meta, _ = _field(root, field_loc)
    # a wrong type is named where it sits, list index included; a field that says more (`or auto: ...`) says it all
    if kind in _TYPE_ERRORS and (field_loc != loc or not _why(_unwrap(tp, meta)[1])):
        where = key + "".join(f"[{p}]" for p in loc if isinstance(p, int))
        return f"params.yaml: {where}: expected {_NOUNS[_TYPE_ERRORS[kind]]}, got {err['input']!r}"
    return f"params.yaml: {key}: expected {_expected(tp, meta)}, got {_raw_at(raw, field_loc)!r}"
