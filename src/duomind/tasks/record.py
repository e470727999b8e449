"""The task record and answer checking.

A record is what every generator returns and every data file holds, one JSON object a line:
`id, task, difficulty, prompt, answer, steps` and, for code tasks only, `tests`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

LEVELS = (1, 2, 3, 4, 5)
_REQUIRED = ("id", "task", "difficulty", "prompt", "answer", "steps")


@dataclass(frozen=True)
class Task:
    """One verifiable problem.

    Attributes:
        task: Generator name (`arith`, `add`, `mul`, `word`, `sequence`, `code`).
        difficulty: Level 1 (easiest) to 5.
        prompt: The question, one line.
        answer: Canonical answer: plain integer digits, or reference source for `code`.
        steps: Worked solution, one short reasoning step each (the slow-mode trace).
        tests: `assert` lines a `code` answer must pass; empty for other tasks.
        id: Stable id, `{task}-{seed}-{index}`; set by `generate`.
    """

    task: str
    difficulty: int
    prompt: str
    answer: str
    steps: tuple[str, ...]
    tests: tuple[str, ...] = ()
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON record; `tests` appears only for tasks that have them."""
        d = {"id": self.id, "task": self.task, "difficulty": self.difficulty, "prompt": self.prompt}
        d |= {"answer": self.answer, "steps": list(self.steps)}
        if self.tests:
            d["tests"] = list(self.tests)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        """Build a task from a JSON record, naming the first field that is missing or of the wrong type."""
        if not isinstance(d, dict):
            raise ValueError(f"a task record must be a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(
                f"task record lacks field(s) {', '.join(missing)}; a record needs {', '.join(_REQUIRED)}"
            )
        for key in ("id", "task", "prompt", "answer"):
            if not isinstance(d[key], str):
                raise ValueError(f"task record field {key!r} must be a string, got {d[key]!r}")
        if d["difficulty"] not in LEVELS or isinstance(d["difficulty"], bool):
            raise ValueError(f"task record difficulty must be an integer 1-5, got {d['difficulty']!r}")
        for key in ("steps", "tests"):
            value = d.get(key, [])
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ValueError(f"task record field {key!r} must be a list of strings, got {value!r}")
        return cls(
            task=d["task"],
            difficulty=d["difficulty"],
            prompt=d["prompt"],
            answer=d["answer"],
            steps=tuple(d["steps"]),
            tests=tuple(d.get("tests", [])),
            id=d["id"],
        )


def as_task(record: Task | dict[str, Any]) -> Task:
    """Accept a `Task` or its JSON record."""
    return record if isinstance(record, Task) else Task.from_dict(record)


# Plain decimals only (no "inf", "NaN", exponents or underscores), with thousands separators allowed:
# "1,234" is a number, "1, 2" is not.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_GROUPED = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")


def _normalise(text: str) -> str | Decimal:
    text = " ".join(str(text).split())
    plain = text.replace(",", "") if _GROUPED.fullmatch(text) else text
    return Decimal(plain) if _NUMBER.fullmatch(plain) else text


def check_answer(record: Task | dict[str, Any], response_answer: str) -> bool:
    """Exact-match check of a final answer (not a whole response) against the record's answer.

    Whitespace is normalised; numbers compare by value, so "1,234", " 1234 " and "1234.0" all match
    "1234". Code answers cannot be checked by matching: run `code_tests(record)` in the sandbox
    (`duomind.rewards.sandbox`) instead.

    Raises:
        ValueError: For a `code` record.
    """
    task = as_task(record)
    if task.task == "code":
        raise ValueError(
            f"{task.id or 'this record'} is a code task: its answer is checked by running "
            "code_tests(record) in the sandbox (duomind.rewards.sandbox), not by matching text"
        )
    expected, got = _normalise(task.answer), _normalise(response_answer)
    return type(expected) is type(got) and expected == got


def code_tests(record: Task | dict[str, Any]) -> list[str]:
    """The `assert` lines a code task's solution must pass; never executed here.

    Raises:
        ValueError: If the record is not a code task.
    """
    task = as_task(record)
    if task.task != "code" or not task.tests:
        raise ValueError(f"{task.id or 'this record'} is a {task.task!r} task; only code tasks carry tests")
    return list(task.tests)
