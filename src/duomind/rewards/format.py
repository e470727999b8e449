"""Format and behaviour terms: think/answer structure per mode, n-gram repetition, length.

MARS sources (arXiv 2505.22375) that shape HOW a model answers, whatever the task. All pure.

DuoMind's reasoning format: slow mode is `<think>\\n...\\n</think>\\n\\nanswer`; fast mode has no
think span at all (an empty `<think></think>` is a violation too: empty tags leaking into fast
answers is a known complaint); auto mode accepts either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MODES = ("fast", "slow", "auto")


@dataclass(frozen=True)
class FormatResult:
    """1.0 if the response has the structure its mode asks for, else 0.0, with the reason."""

    value: float
    reason: str


def split_think(response: str) -> tuple[str | None, str]:
    """Split a response into (reasoning, answer). No think span: (None, response).

    An unterminated `<think>` leaves no answer: everything is reasoning.
    """
    start = response.find(THINK_OPEN)
    if start < 0:
        end = response.find(THINK_CLOSE)
        if end < 0:
            return None, response
        return response[:end], response[end + len(THINK_CLOSE):]  # a template may pre-fill "<think>"
    end = response.find(THINK_CLOSE, start)
    if end < 0:
        return response[start + len(THINK_OPEN):], ""
    return response[start + len(THINK_OPEN): end], response[end + len(THINK_CLOSE):]


def format_score(response: str, mode: str | None = None) -> FormatResult:
    """Check the think/answer structure for `mode` (`fast`, `slow`, or `auto`/None: either)."""
    mode = mode or "auto"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    opens, closes = response.count(THINK_OPEN), response.count(THINK_CLOSE)
    has_think = opens or closes
    if mode == "fast" and has_think:
        return FormatResult(0.0, "fast mode must not think (no <think> tags, not even empty ones)")
    if mode == "slow" and not has_think:
        return FormatResult(0.0, "slow mode must think: no <think> span")
    if has_think:
        if opens > 1 or closes != 1:
            return FormatResult(0.0, f"expected one think span, found {opens} <think> and {closes} </think>")
        if opens and response.lstrip()[: len(THINK_OPEN)] != THINK_OPEN:
            return FormatResult(0.0, "text before <think>")
        reasoning, answer = split_think(response)
        if not (reasoning or "").strip():
            return FormatResult(0.0, "empty think span")
        if not answer.strip():
            return FormatResult(0.0, "no answer after </think>")
        return FormatResult(1.0, "think span and answer")
    if not response.strip():
        return FormatResult(0.0, "empty response")
    return FormatResult(1.0, "direct answer")


_WORD = re.compile(r"\w+|[^\w\s]")


def repetition_penalty(text: str, n: int = 4, free: float = 0.1) -> float:
    """Penalty in [-1, 0] for repeated word n-grams (degenerate loops), 0 for normal text.

    r = 1 - unique_ngrams / ngrams; the first `free` fraction of repetition is tolerated (natural
    text repeats some n-grams), the rest is scaled linearly to -1 at r = 1.
    """
    words = _WORD.findall(text.lower())
    total = len(words) - n + 1
    if total <= 1:
        return 0.0
    r = 1.0 - len({tuple(words[i: i + n]) for i in range(total)}) / total
    return -(r - free) / (1.0 - free) if r > free else 0.0


def length_penalty(text: str, target: int, limit: int) -> float:
    """Penalty in [-1, 0]: 0 up to `target` words, falling linearly to -1 at `limit` words and beyond."""
    if limit <= target:
        raise ValueError(f"length limit ({limit}) must exceed the target ({target})")
    over = len(text.split()) - target
    return -min(1.0, over / (limit - target)) if over > 0 else 0.0
