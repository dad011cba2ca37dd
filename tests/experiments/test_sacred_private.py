"""experiments/sacred_private.py overrides and calls Sacred's private names: this fails, naming
the hook, when the installed Sacred no longer has one of them (a Sacred release moved it)."""

from __future__ import annotations

import inspect

import pytest
import sacred.arg_parser
from sacred.ingredient import Ingredient
from sacred.run import Run

from experiments.sacred_private import HOOKS, PlainExperiment, RecordedRun


def attribute_names(cls: type) -> set[str]:
    """Methods and class attributes, and the attributes its __init__ sets on self."""
    names = {name for klass in cls.__mro__ for name in vars(klass)}
    source = inspect.getsource(cls.__init__)
    return names | {word.split("=")[0].strip() for word in source.split("self.")[1:]}


@pytest.mark.parametrize(
    "cls, name", [(cls, name) for cls, names in HOOKS.items() for name in names]
)
def test_sacred_still_has_the_hook(cls, name):
    assert name in attribute_names(cls), f"Sacred's {cls.__name__} no longer has {name}"


def test_every_overridden_run_hook_is_listed():
    overridden = {
        name
        for name in vars(RecordedRun)
        if name.startswith("_") and not name.startswith("__") and name in vars(Run)
    }
    assert overridden <= set(HOOKS[Run])
    assert "_create_run" in vars(PlainExperiment)


def test_sacred_still_parses_values_and_takes_caller_globals():
    assert sacred.arg_parser._convert_value("[1, 2]") == [1, 2]
    assert "_caller_globals" in inspect.signature(Ingredient.__init__).parameters
