"""`duomind serve` / `duomind chat`: the default checkpoint and its error, the positional checkpoint."""

from __future__ import annotations

import pytest

from duomind.cli import main
from duomind.serve import cli


def test_default_checkpoint_is_the_embedded_model_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "duomind-reasoner")
    with pytest.raises(FileNotFoundError, match="pass one, e.g. `duomind serve runs/reasoner`"):
        cli.default_checkpoint(None)
    (tmp_path / "duomind-reasoner").mkdir()
    (tmp_path / "duomind-reasoner" / "config.json").write_text("{}")
    assert cli.default_checkpoint(None) == tmp_path / "duomind-reasoner"
    assert str(cli.default_checkpoint("runs/x")) == "runs/x"


def test_positional_checkpoint_reaches_the_verb(tmp_path):
    with pytest.raises(SystemExit, match="is not a checkpoint directory"):
        main(["serve", str(tmp_path / "nowhere"), "--port", "1"])
    with pytest.raises(SystemExit, match="--mode 'medium' is not one of"):
        main(["chat", str(tmp_path), "--mode", "medium"])
