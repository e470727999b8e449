"""Record schema, answer checking, text formats, held-out split and JSONL files."""

from __future__ import annotations

import json
import os

import pytest

from duomind.tasks import (
    DataError,
    Task,
    check_answer,
    code_tests,
    corpus_text,
    generate,
    pretrain_text,
    read_jsonl,
    read_tasks,
    sft_record,
    sft_records,
    split_heldout,
    write_jsonl,
    write_text,
)

ADD = Task(
    "add",
    1,
    "What is 27 + 6?",
    "33",
    ("7 + 6 = 13, carry 1, so far 3", "2 + 0 + 1 = 3, so far 33"),
    id="add-0-0",
)
CODE = Task(
    "code",
    1,
    "In Python, write f(x) that returns x + 1.",
    "def f(x):\n    return x + 1",
    ("add 1",),
    ("assert f(1) == 2",),
    "code-0-1",
)


def test_record_dict_has_the_documented_fields_in_order():
    assert list(ADD.to_dict()) == ["id", "task", "difficulty", "prompt", "answer", "steps"]
    assert list(CODE.to_dict()) == ["id", "task", "difficulty", "prompt", "answer", "steps", "tests"]
    assert ADD.to_dict()["steps"] == list(ADD.steps)
    assert Task.from_dict(CODE.to_dict()) == CODE


@pytest.mark.parametrize(
    "change, message",
    [
        ({"difficulty": 7}, "difficulty must be an integer 1-5"),
        ({"difficulty": True}, "difficulty must be an integer 1-5"),
        ({"steps": "one step"}, "'steps' must be a list of strings"),
        ({"prompt": 3}, "'prompt' must be a string"),
    ],
)
def test_from_dict_names_the_bad_field(change, message):
    with pytest.raises(ValueError, match=message):
        Task.from_dict(ADD.to_dict() | change)
    d = ADD.to_dict()
    del d["answer"]
    with pytest.raises(ValueError, match="lacks field.*answer"):
        Task.from_dict(d)


@pytest.mark.parametrize("response", ["33", " 33 ", "33.0", "+33", "\n33\t"])
def test_check_answer_accepts_the_same_number_written_differently(response):
    assert check_answer(ADD, response)
    assert check_answer(ADD.to_dict(), response)


@pytest.mark.parametrize(
    "response",
    ["34", "3 3", "", "thirty-three", "33 apples", "-33", "sNaN", "NaN", "inf", "33e0", "3_3", "0x21"],
)
def test_check_answer_rejects_other_answers(response):
    assert not check_answer(ADD, response)


def test_check_answer_thousands_separators_but_not_lists():
    big = Task("mul", 3, "What is 250 * 49?", "12250", ("250 * 9 = 2250",))
    assert check_answer(big, "12,250") and check_answer(big, "12250")
    assert not check_answer(Task("add", 1, "q", "12", ("s",)), "1, 2")


def test_code_answers_are_checked_by_their_tests_not_by_matching():
    with pytest.raises(ValueError, match="sandbox"):
        check_answer(CODE, CODE.answer)
    assert code_tests(CODE) == ["assert f(1) == 2"] and code_tests(CODE.to_dict()) == ["assert f(1) == 2"]
    with pytest.raises(ValueError, match="only code tasks carry tests"):
        code_tests(ADD)


def test_generated_answers_check_against_themselves_and_not_neighbours():
    records = [r for r in generate(n=60, seed=1) if r.task != "code"]
    for a, b in zip(records, records[1:]):
        assert check_answer(a, a.answer)
        assert check_answer(a, b.answer) == (int(a.answer) == int(b.answer))


def test_pretrain_text_formats():
    assert pretrain_text(ADD) == "Q: What is 27 + 6?\nA: 33"
    assert pretrain_text(ADD, working=True) == (
        "Q: What is 27 + 6?\nWork: 7 + 6 = 13, carry 1, so far 3; 2 + 0 + 1 = 3, so far 33\nA: 33"
    )
    assert pretrain_text(ADD, working=True, work_lines=True) == (
        "Q: What is 27 + 6?\nWork:\n7 + 6 = 13, carry 1, so far 3\n2 + 0 + 1 = 3, so far 33\nA: 33"
    )  # the think span's layout: one step a line
    assert pretrain_text(ADD, work_lines=True) == pretrain_text(ADD)  # no working, nothing to lay out
    assert (
        pretrain_text(CODE) == "Q: In Python, write f(x) that returns x + 1.\nA: def f(x):\n    return x + 1"
    )


def test_sft_fast_and_slow_chats():
    fast, slow = sft_record(ADD, "fast"), sft_record(ADD, "slow")
    assert fast == {
        "id": "add-0-0",
        "task": "add",
        "difficulty": 1,
        "mode": "fast",
        "messages": [{"role": "user", "content": "What is 27 + 6?"}, {"role": "assistant", "content": "33"}],
    }
    assert slow["mode"] == "slow"
    assert slow["messages"][1]["content"] == (
        "<think>\n7 + 6 = 13, carry 1, so far 3\n2 + 0 + 1 = 3, so far 33\n</think>\n\n33"
    )
    assert sft_record(CODE, "fast")["messages"][1]["content"] == "```python\ndef f(x):\n    return x + 1\n```"
    assert sft_record(CODE, "slow")["messages"][1]["content"].endswith(
        "</think>\n\n```python\ndef f(x):\n    return x + 1\n```"
    )
    with pytest.raises(ValueError, match="mode must be one of fast, slow"):
        sft_record(ADD, "medium")


def test_corpus_mixes_tasks_and_holds_both_variants_of_every_record():
    records = generate(n=60, seed=2)
    corpus = corpus_text(records, seed=2)
    docs = corpus.rstrip("\n").split("\n\n")  # no record text contains a blank line
    assert sorted(docs) == sorted(pretrain_text(r, w) for r in records for w in (False, True))
    first_tasks = [
        next(r.task for r in records if pretrain_text(r) == d or pretrain_text(r, True) == d)
        for d in docs[:12]
    ]
    assert len(set(first_tasks)) >= 3  # shuffled, not grouped by task
    assert corpus == corpus_text(records, seed=2)

    def inline(doc: str) -> str:  # a line-laid-out working back to `Work: a; b`
        q, work, rest = doc.partition("\nWork:\n")
        steps, _, answer = rest.partition("\nA: ")
        return f"{q}\nWork: {'; '.join(steps.split(chr(10)))}\nA: {answer}" if work else doc

    lines = corpus_text(records, seed=2, work_lines=True).rstrip("\n").split("\n\n")
    assert lines != docs and [inline(d) for d in lines] == docs  # the same documents in the same order
    chats = sft_records(records)
    assert [(c["id"], c["mode"]) for c in chats[:2]] == [(records[0].id, "fast"), (records[0].id, "slow")]
    assert len(chats) == 2 * len(records)


def test_heldout_split_is_disjoint_by_prompt_and_covers_every_task():
    records = generate(n=600, seed=3)
    train, heldout = split_heldout(records, 0.1, seed=3)
    held = {r.prompt for r in heldout}
    assert held and not held & {r.prompt for r in train}
    assert len(held) == len(heldout)  # de-duplicated
    assert {r.prompt for r in train} | held == {r.prompt for r in records}
    assert abs(len(held) - 0.1 * len({r.prompt for r in records})) <= 1
    assert {r.task for r in heldout} == {r.task for r in records}
    assert split_heldout(records, 0.1, seed=3) == (train, heldout)
    assert split_heldout(records, 0.0) == (records, [])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_heldout(records, 1.0)


def test_heldout_split_keeps_duplicate_prompts_on_one_side():
    a = Task("add", 1, "What is 1 + 1?", "2", ("1 + 1 = 2",), id="a")
    b = Task("add", 1, "What is 2 + 2?", "4", ("2 + 2 = 4",), id="b")
    records = [a, b, a, b, a]
    for seed in range(5):
        train, heldout = split_heldout(records, 0.5, seed)
        assert len(heldout) == 1 and heldout[0] not in train and len(train) in (2, 3)


def test_jsonl_round_trip(tmp_path):
    records = generate(n=30, seed=4)
    path = write_jsonl(tmp_path / "sub" / "tasks.jsonl", records)
    assert read_tasks(path) == records
    assert read_jsonl(path) == [r.to_dict() for r in records]
    assert [p.name for p in path.parent.iterdir()] == ["tasks.jsonl"]  # no temp files left behind


def test_missing_file_says_how_to_make_data(tmp_path):
    with pytest.raises(DataError, match="no such file.*duomind data make") as err:
        read_jsonl(tmp_path / "nope.jsonl")
    assert str(tmp_path / "nope.jsonl") in str(err.value)


def test_empty_file_says_it_is_empty(tmp_path):
    for text in ("", "\n  \n"):
        path = write_text(tmp_path / "empty.jsonl", text)
        with pytest.raises(DataError, match="empty.jsonl is empty"):
            read_jsonl(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "x",', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("plain text", "not valid JSON"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    good = json.dumps(ADD.to_dict())
    path = write_text(tmp_path / "t.jsonl", f"{good}\n\n{bad}\n{good}\n")
    with pytest.raises(DataError, match=f"t.jsonl:3: {message}"):
        read_jsonl(path)


def test_read_tasks_names_file_and_line_of_an_invalid_record(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ADD.to_dict(), {"id": "x", "task": "add"}])
    with pytest.raises(DataError, match="t.jsonl:2: task record lacks field"):
        read_tasks(path)


def test_write_is_atomic_when_records_fail_midway(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ADD])
    before = path.read_bytes()

    def broken():
        yield ADD.to_dict()
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.jsonl"]
