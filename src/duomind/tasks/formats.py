"""Text formats built from task records: pre-training text and fast/slow SFT chats.

- pre-training: `Q: {prompt}\\nA: {answer}`, and with working `Q: {prompt}\\nWork: {steps; ...}\\nA: {answer}`
  (or, `work_lines=True`, `Work:` followed by one step a line, the layout of the think span).
- SFT fast: the assistant says the answer only.
- SFT slow: `<think>\\n{one step a line}\\n</think>\\n\\n{answer}`.
Code answers are wrapped in a ```python fence in chats.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from duomind.tasks.record import Task, as_task

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MODES = ("fast", "slow")

Record = Task | dict[str, Any]


def pretrain_text(record: Record, working: bool = False, work_lines: bool = False) -> str:
    """One pre-training document; `working=True` adds the worked steps, `work_lines=True` one step a line."""
    t = as_task(record)
    work = ""
    if working:
        work = "Work:\n" + "".join(f"{s}\n" for s in t.steps) if work_lines else f"Work: {'; '.join(t.steps)}\n"
    return f"Q: {t.prompt}\n{work}A: {t.answer}"


def corpus_text(records: Iterable[Record], seed: int = 0, work_lines: bool = False) -> str:
    """Pre-training corpus: both variants of every record, shuffled so tasks mix, blank-line separated."""
    docs = [pretrain_text(r, working, work_lines) for r in records for working in (False, True)]
    random.Random(seed).shuffle(docs)
    return "\n\n".join(docs) + "\n"


def final_answer(record: Record) -> str:
    """The answer as the assistant writes it: code goes in a python fence."""
    t = as_task(record)
    return f"```python\n{t.answer}\n```" if t.task == "code" else t.answer


def assistant_content(record: Record, mode: str) -> str:
    """Assistant message for `mode` "fast" (answer only) or "slow" (think block, then answer)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    t = as_task(record)
    if mode == "fast":
        return final_answer(t)
    return f"{THINK_OPEN}\n" + "\n".join(t.steps) + f"\n{THINK_CLOSE}\n\n" + final_answer(t)


def sft_record(record: Record, mode: str) -> dict[str, Any]:
    """A chat record `{id, task, difficulty, mode, messages}` with one user and one assistant turn."""
    t = as_task(record)
    messages = [
        {"role": "user", "content": t.prompt},
        {"role": "assistant", "content": assistant_content(t, mode)},
    ]
    return {"id": t.id, "task": t.task, "difficulty": t.difficulty, "mode": mode, "messages": messages}


def sft_records(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Fast and slow chats for every record (the two share the record's id)."""
    return [sft_record(r, mode) for r in records for mode in MODES]
