"""Code correctness: run the response's program against the record's tests in the sandbox.

A MARS source (arXiv 2505.22375: test execution for code). The code is the LAST fenced ```python
block of the answer part (after `</think>`), else the last fenced block of any language tag, else
the whole answer. The tests run after it in ONE sandboxed program and are reported one by one;
the value is the pass rate, or all-or-nothing when asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from duomind.rewards.format import split_think
from duomind.rewards.sandbox import Limits, run_program

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CodeResult:
    """Outcome of one code check."""

    value: float
    verdict: str
    tests: list[dict] = field(default_factory=list)
    error: str | None = None
    isolation: str = ""


def extract_code(response: str) -> str | None:
    """The program in a response: last ```python block, else last fenced block, else the answer text."""
    answer = split_think(response)[1]
    blocks = _FENCE.findall(answer)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return answer if answer.strip() else None


def score(response: str, tests: Sequence[str], limits: Limits = Limits(), all_or_nothing: bool = False,
          isolation: str = "auto") -> CodeResult:
    """Score a code response by running its tests.

    Args:
        response: the model's full response.
        tests: Python snippets (typically asserts), each reported separately.
        limits: sandbox limits for the whole program.
        all_or_nothing: value 1.0 only if every test passes (else the pass rate).
        isolation: sandbox isolation mode (`auto` picks the strongest available).

    Returns:
        `CodeResult` with the value, the sandbox verdict, per-test outcomes and any error.
    """
    code = extract_code(response)
    if code is None:
        return CodeResult(0.0, "crash", error="no code in the response")
    run = run_program(code, tests, limits, isolation=isolation)
    rate = run.pass_rate
    value = float(rate == 1.0) if all_or_nothing else rate
    if run.verdict not in ("ok", "wrong_answer"):
        value = 0.0  # a timed-out or blocked program earns nothing for the tests it passed first
    return CodeResult(value, run.verdict, [{"passed": t.passed, "error": t.error} for t in run.tests],
                      run.error or run.blocked, run.isolation)
