"""Which reasoning mode a request asks for: fast, slow or auto, and how long slow mode may think.

Pangu Embedded (arXiv 2505.22375) switches its dual-system model by meta prompts; openPangu-Embedded
writes them as ` /no_think` (fast) and ` /auto_think` (the model decides); Qwen3 adds `/think` and the
chat-template flag `enable_thinking`; OpenAI clients send `reasoning_effort`. All of them end up here.

Precedence *(design)*: explicit request fields are hard switches (`mode`, then `reasoning_effort`, then
`chat_template_kwargs.enable_thinking`; two that contradict each other are an error); without them the
latest switch typed in the conversation wins; without one, the server's default mode (slow, as in
openPangu). Switches are removed from the text the model sees: it was trained on the mode markers of the
chat template, not on the words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from duomind.tokenizer import MODES

SWITCHES = {"/no_think": "fast", "/think": "slow", "/auto_think": "auto"}
# A switch is a whole word: `/think` inside `/thinking` or a path like a/think/b is not one.
_SWITCH_RE = re.compile(r"(?<![\w/])(/no_think|/auto_think|/think)(?![\w/])")
EFFORTS = ("none", "minimal", "low", "medium", "high")
# Thinking budgets (tokens) per OpenAI reasoning_effort; "none"/"minimal" mean no thinking at all.
EFFORT_BUDGETS = {"low": 256, "medium": 1024, "high": 4096}


@dataclass(frozen=True)
class ModeChoice:
    """The resolved mode of one request.

    Attributes:
        mode: "fast", "slow" or "auto".
        budget: Most tokens the thinking span may hold (None: bounded by max_tokens only).
        source: What decided it ("mode", "reasoning_effort", "enable_thinking", "message" or "default").
    """

    mode: str
    budget: int | None
    source: str


def message_text(content: Any) -> str:
    """The text of an OpenAI message content (a string or a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"message content part of type {kind!r} is not supported: this model reads text "
                                 "only; send {'type': 'text', 'text': ...} parts or a plain string.")
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"message content must be a string or a list of text parts, got {type(content).__name__}.")


def strip_switches(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
    """Remove /think, /no_think and /auto_think from the messages; return them and the mode of the latest."""
    latest = None
    cleaned = []
    for message in messages:
        text = message["content"]
        found = _SWITCH_RE.findall(text)
        if found:
            latest = SWITCHES[found[-1]]
            text = re.sub(r"[ \t]{2,}", " ", _SWITCH_RE.sub("", text)).strip()
        cleaned.append({**message, "content": text})
    return cleaned, latest


def resolve_mode(messages: list[dict[str, str]], mode: str | None = None, reasoning_effort: str | None = None,
                 enable_thinking: bool | None = None, thinking_budget: int | None = None,
                 default: str = "slow") -> tuple[list[dict[str, str]], ModeChoice]:
    """Resolve a chat request's mode and thinking budget (see the module docstring for the precedence).

    Args:
        messages: Chat messages with string contents.
        mode: API field: "fast", "slow" or "auto".
        reasoning_effort: OpenAI field: "none"/"minimal" (fast) or "low"/"medium"/"high" (slow, growing budget).
        enable_thinking: Chat-template flag: False = fast, True = slow.
        thinking_budget: Explicit budget in tokens; overrides the effort's.
        default: Mode when nothing asks for one.

    Returns:
        The messages with switches removed, and the choice.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(MODES)}.")
    if reasoning_effort is not None and reasoning_effort not in EFFORTS:
        raise ValueError(f"reasoning_effort={reasoning_effort!r} is not one of {list(EFFORTS)}.")
    if default not in MODES:
        raise ValueError(f"default mode {default!r} is not one of {list(MODES)}.")
    if thinking_budget is not None and thinking_budget < 1:
        raise ValueError(f"thinking_budget must be at least 1 token, got {thinking_budget}.")
    cleaned, typed = strip_switches(messages)
    effort_mode = None if reasoning_effort is None else ("fast" if reasoning_effort in ("none", "minimal") else "slow")
    flag_mode = None if enable_thinking is None else ("slow" if enable_thinking else "fast")
    explicit = [(name, m) for name, m in (("mode", mode), ("reasoning_effort", effort_mode),
                                          ("enable_thinking", flag_mode)) if m is not None]
    # auto may still think, so it agrees with any effort that allows thinking
    clashes = [(a, b) for a in explicit for b in explicit
               if a[0] < b[0] and (a[1] == "fast") != (b[1] == "fast")]
    if clashes:
        (n1, m1), (n2, m2) = clashes[0]
        raise ValueError(f"{n1} asks for {m1} mode but {n2} for {m2}; send only one of them.")
    if explicit:
        source, chosen = explicit[0]
    elif typed is not None:
        source, chosen = "message", typed
    else:
        source, chosen = "default", default
    budget = thinking_budget
    if budget is None and reasoning_effort in EFFORT_BUDGETS:
        budget = EFFORT_BUDGETS[reasoning_effort]
    return cleaned, ModeChoice(chosen, None if chosen == "fast" else budget, source)
