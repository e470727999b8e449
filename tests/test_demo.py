"""`duomind demo` on a shipped reasoner: every mode answers, auto reports its choice, FIRP is lossless."""

from __future__ import annotations

import pytest

from duomind.demo import demo, pick
from duomind.tasks import generate


def test_demo_answers_in_every_mode_with_firp_on(shipped_reasoner, capsys):
    _, _, asset = shipped_reasoner
    summary = demo(checkpoint=str(asset), per_level=1, max_tokens=24, threads=1)
    assert set(summary) == {"fast", "slow", "auto", "speed"}
    assert all(0.0 <= summary[m]["accuracy"] <= 1.0 for m in ("fast", "slow", "auto"))
    assert summary["speed"]["equal_outputs"] is True  # FIRP on or off: the same greedy tokens
    printed = capsys.readouterr().out
    assert "held-back problems" in printed and "FIRP speculative decoding on" in printed


def test_demo_names_missing_problems(shipped_reasoner, tmp_path):
    _, _, asset = shipped_reasoner
    with pytest.raises(FileNotFoundError, match="--problems"):
        demo(checkpoint=str(asset), problems=str(tmp_path / "none.jsonl"), threads=1)


def test_pick_takes_the_first_problems_of_each_level():
    tasks = generate("add", n=3, seed=0, difficulty=2) + generate("add", n=3, seed=0, difficulty=1)
    assert [t.difficulty for t in pick(tasks, 2)] == [1, 1, 2, 2]


def test_the_embedded_model_is_complete_and_its_predictors_fit_it():
    """What `make demo` and `duomind serve` load by default: sealed, card present, FIRP predictors for these weights."""
    from duomind.generate.drafters import predictor_drafter
    from duomind.reasoner.ship import is_shipped
    from duomind.serve.cli import DEFAULT_MODEL
    from duomind.tasks import read_tasks
    from duomind.train.checkpoint import load_model

    assert is_shipped(DEFAULT_MODEL) and (DEFAULT_MODEL / "README.md").is_file()
    model = load_model(DEFAULT_MODEL)  # verifies every file against the COMPLETE marker
    predictor_drafter(model, DEFAULT_MODEL / "predictors")  # refuses predictors trained for other weights
    assert len(read_tasks(DEFAULT_MODEL / "heldout.jsonl")) > 100
