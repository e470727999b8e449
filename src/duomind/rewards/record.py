"""The reward record format (JSONL in, JSONL out) and its validation.

In:  {"id", "task": "math"|"code"|"general", "prompt", "response", "answer"?, "tests"?, "reference"?,
      "mode"?: "fast"|"slow"|"auto"}
Out: the same record plus {"reward", "components": {...}, "verdict", "detail"}.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("math", "code", "general")
MODES = ("fast", "slow", "auto")


class RecordError(ValueError):
    """A record that cannot be scored; the message names the field and the fix."""


@dataclass(frozen=True)
class Record:
    """One response to score."""

    id: str | int
    task: str
    prompt: str
    response: str
    answer: str | None = None
    tests: tuple[str, ...] | None = None
    reference: str | None = None
    mode: str | None = None


def parse_record(raw: object) -> Record:
    """Validate a JSON object as a `Record`; raise `RecordError` saying what is wrong and how to fix it."""
    if not isinstance(raw, dict):
        raise RecordError(f"a record must be a JSON object, got {type(raw).__name__}")
    rid = raw.get("id")
    where = f"record {rid!r}" if rid is not None else "record without an id"
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError(f"{where}: 'id' must be a string or an integer")
    task = raw.get("task")
    if task not in TASKS:
        raise RecordError(f"{where}: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    for name in ("prompt", "response"):
        if not isinstance(raw.get(name), str):
            raise RecordError(f"{where}: '{name}' must be a string")
    for name in ("answer", "reference"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise RecordError(f"{where}: '{name}' must be a string when given")
    mode = raw.get("mode")
    if mode is not None and mode not in MODES:
        raise RecordError(f"{where}: 'mode' must be one of {', '.join(MODES)} or absent, got {mode!r}")
    tests = raw.get("tests")
    if tests is not None and (not isinstance(tests, list) or not all(isinstance(t, str) for t in tests)):
        raise RecordError(f"{where}: 'tests' must be a list of Python snippets (strings)")
    if task == "math" and not raw.get("answer"):
        raise RecordError(f"{where}: a math record needs 'answer' (the reference final answer)")
    if task == "code" and not tests:
        raise RecordError(f"{where}: a code record needs 'tests' (a list of assert snippets)")
    return Record(rid, task, raw["prompt"], raw["response"], raw.get("answer"),
                  tuple(tests) if tests is not None else None, raw.get("reference"), mode)
