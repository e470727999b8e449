"""The `duomind` command: every verb is listed and has --help; unknown verbs and bad input fail clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from duomind.cli import VERBS, main


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "duomind.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in VERBS:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*verb.split(), "--help"])
    assert exit_.value.code == 0
    assert "usage: duomind " + verb in capsys.readouterr().out


def test_unknown_verb_suggests_close_ones():
    with pytest.raises(SystemExit, match="unknown verb 'trian'.*Did you mean: train"):
        main(["trian"])


def test_group_lists_its_sub_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["tokenizer"])
    assert "tokenizer train" in capsys.readouterr().out


def test_library_errors_become_one_line_messages(tmp_path):
    with pytest.raises(SystemExit, match="duomind generate: error: .*not a checkpoint directory"):
        main(["generate", str(tmp_path), "hello"])
