"""Every backend provides exactly the contract in pipeline/backends.py, with the same parameters."""
from __future__ import annotations

import inspect

import pytest

from pipeline import backends, params
from pipeline.backends import Backend

FUNCTIONS = {n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_")}
CONSTANTS = set(Backend.__annotations__)


def public(module) -> set[str]:
    """Names a backend defines itself: its functions and its UPPER-case constants (imports excluded)."""
    return {n for n, v in vars(module).items() if not n.startswith("_") and
            ((inspect.isfunction(v) and v.__module__ == module.__name__) or (n.isupper() and not inspect.ismodule(v)))}


def shape(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_the_contract_is_not_empty():
    assert {"setup", "build", "make_step", "make_predict", "put", "take", "save", "load"} <= FUNCTIONS
    assert {"NAME", "DEFAULT", "VARIANTS", "MODEL_SUFFIX"} == CONSTANTS


@pytest.mark.parametrize("framework", params.FRAMEWORKS)
def test_backend_exposes_exactly_the_contract(framework):
    be = backends.load(framework)
    assert public(be) == FUNCTIONS | CONSTANTS
    for name in FUNCTIONS:
        assert shape(getattr(be, name)) == shape(getattr(Backend, name)), name
    assert be.NAME == framework and be.DEFAULT in be.VARIANTS
    assert be.variants([False, True], True)[0] == be.DEFAULT


def test_a_missing_or_reshaped_function_is_caught():
    class Fake:  # what a half-done third backend looks like
        NAME, MODEL_SUFFIX, DEFAULT, VARIANTS = "fake", ".npz", "plain", {"plain": ""}

    fake = type(inspect)("pipeline.fake_backend")
    vars(fake).update({k: v for k, v in vars(Fake).items() if k.isupper()})
    exec("def setup(threads, device): pass", vars(fake))  # one function, missing a parameter
    assert public(fake) != FUNCTIONS | CONSTANTS
    assert shape(fake.setup) != shape(Backend.setup)
