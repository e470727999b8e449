"""`duomind data make`: the files it writes, their consistency, and its argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duomind.cli import main
from duomind.tasks import TASKS, check_answer, generate, pretrain_text, read_jsonl, read_tasks
from duomind.tasks.cli import make

FILES = ("tasks.jsonl", "heldout.jsonl", "corpus.txt", "sft.jsonl")


def test_make_writes_consistent_files_and_a_summary(tmp_path, capsys):
    make(out_dir=str(tmp_path), n=150, seed=1, heldout_fraction=0.1)
    summary = capsys.readouterr().out
    assert all(name in summary for name in TASKS) and "150 records" in summary
    records, heldout = read_tasks(tmp_path / "tasks.jsonl"), read_tasks(tmp_path / "heldout.jsonl")
    assert len(records) == 150 and {r.task for r in records} == set(TASKS)
    held = {r.prompt for r in heldout}
    train = [r for r in records if r.prompt not in held]
    assert held and len(train) < len(records)

    chats = read_jsonl(tmp_path / "sft.jsonl")
    assert len(chats) == 2 * len(train) and {c["mode"] for c in chats} == {"fast", "slow"}
    assert not held & {c["messages"][0]["content"] for c in chats}  # held-out prompts never trained on

    corpus = (tmp_path / "corpus.txt").read_text()
    assert all(f"Q: {p}\n" not in corpus for p in held)
    assert all(pretrain_text(r) in corpus and pretrain_text(r, working=True) in corpus for r in train)
    assert all(check_answer(r, r.answer) for r in heldout if r.task != "code")


def test_make_is_reproducible_byte_for_byte(tmp_path, capsys):
    make(out_dir=str(tmp_path / "a"), n=60, seed=7)
    make(out_dir=str(tmp_path / "b"), n=60, seed=7)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_verb_parses_lists_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "d"
    main(
        [
            "data",
            "make",
            "--out_dir",
            str(out),
            "--n",
            "40",
            "--tasks",
            "[add, code]",
            "--difficulty",
            "[2, 3]",
        ]
    )
    records = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert {r["task"] for r in records} == {"add", "code"} and {r["difficulty"] for r in records} == {2, 3}
    assert all("tests" in r for r in records if r["task"] == "code")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"tasks": ["add", "poetry"]},
            "unknown task 'poetry'; known tasks: arith, add, mul, word, sequence, code",
        ),
        ({"difficulty": [0]}, "difficulty must be an integer from 1 to 5"),
        ({"n": 0}, "n must be at least 1"),
        ({"heldout_fraction": 1.5}, r"heldout_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_arguments_fail_before_writing_anything(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(out_dir=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_doc_examples_are_real_generator_output():
    doc = (Path(__file__).parents[2] / "docs" / "tasks.md").read_text()
    examples = [
        json.loads(line) for line in doc.splitlines() if line.startswith('{"id"') and '"steps"' in line
    ]
    assert {e["task"] for e in examples} == set(TASKS)
    for e in examples:
        assert generate(e["task"], n=1, seed=0, difficulty=e["difficulty"])[0].to_dict() == e
