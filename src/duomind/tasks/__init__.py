"""Synthetic verifiable tasks: seeded generators with exact answers, data formats and JSONL files.

    >>> from duomind.tasks import generate, check_answer
    >>> t = generate("add", n=1, seed=0, difficulty=1)[0]
    >>> check_answer(t, t.answer)
    True

Tasks: `arith`, `add`, `mul`, `word`, `sequence`, `code` (see docs/tasks.md). `duomind data make`
writes a data directory (see `duomind.tasks.cli.make`).
"""

from duomind.tasks.formats import (
    MODES,
    THINK_CLOSE,
    THINK_OPEN,
    assistant_content,
    corpus_text,
    final_answer,
    pretrain_text,
    sft_record,
    sft_records,
)
from duomind.tasks.io import DataError, read_jsonl, read_tasks, write_jsonl, write_text
from duomind.tasks.record import LEVELS, Task, as_task, check_answer, code_tests
from duomind.tasks.registry import TASKS, generate, iter_generate, register, split_heldout

__all__ = [
    "LEVELS",
    "MODES",
    "TASKS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "DataError",
    "Task",
    "as_task",
    "assistant_content",
    "check_answer",
    "code_tests",
    "corpus_text",
    "final_answer",
    "generate",
    "iter_generate",
    "pretrain_text",
    "read_jsonl",
    "read_tasks",
    "register",
    "sft_record",
    "sft_records",
    "split_heldout",
    "write_jsonl",
    "write_text",
]
