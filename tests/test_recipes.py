"""Every recipe in recipes/ names the command that runs it and validates against that verb's options."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from duomind.cli import VERBS, _single_dataclass_param
from duomind.config import from_dict

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def verb_of(text: str) -> str:
    """The verb of the first `duomind <verb> ... --config recipes/<file>` command in the header."""
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for verb in sorted(VERBS, key=len, reverse=True):
        if re.search(rf"duomind {verb}\b.*--config", header):
            return verb
    raise AssertionError("the recipe's header comment must give the command that runs it (duomind VERB --config ...)")


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates_against_its_verb(path):
    text = path.read_text()
    assert text.startswith("#"), "a recipe starts with a comment saying what it is and how to run it"
    target = VERBS[verb_of(text)][0]
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    data = yaml.safe_load(text)
    cls = _single_dataclass_param(fn)
    if cls is not None:
        from_dict(cls, data, path.name)  # unknown keys and bad values raise
        return
    params = inspect.signature(fn).parameters
    unknown = set(data) - set(params)
    assert not unknown, f"{path.name}: keys {sorted(unknown)} are not options of `duomind {verb_of(text)}`"
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(fn, as_positional=False)
    required = {k: "x" for k, p in params.items() if p.default is inspect.Parameter.empty and k not in data}
    parser.parse_object({**required, **data})  # type errors raise


def test_recipes_exist():
    assert any(p.name == "bench-base.yaml" for p in RECIPES)
    assert dataclasses.is_dataclass(_single_dataclass_param(importlib.import_module("duomind.train.cli").train_cli))
