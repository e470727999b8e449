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

ROOT = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(ROOT.rglob("*.yaml"))
# `duomind merge CONFIG.yaml OUT_DIR`: a merge config is the verb's positional input, not its --config
MERGE_HEADER = re.compile(r"^# duomind merge \S+\.ya?ml", re.M)


def verb_of(text: str) -> str:
    """The verb of the first `duomind <verb> ... --config recipes/<file>` command in the header."""
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for verb in sorted(VERBS, key=len, reverse=True):
        if re.search(rf"duomind {verb}\b.*--config", header):
            return verb
    raise AssertionError("the recipe's header comment must give the command that runs it (duomind VERB --config ...)")


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates_against_its_verb(path):
    text = path.read_text()
    assert text.startswith("#"), "a recipe starts with a comment saying what it is and how to run it"
    if MERGE_HEADER.search(text):
        from duomind.merge import MergeConfig

        MergeConfig.from_dict(yaml.safe_load(text), path.name)  # unknown keys, parameters and bad values raise
        assert f"duomind merge recipes/{path.relative_to(ROOT)}" in text, "the header must name this file"
        return
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
