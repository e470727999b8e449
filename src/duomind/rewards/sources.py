"""The registry of MARS reward sources (arXiv 2505.22375): name -> pure per-record score function.

Every source maps `(record, config)` to a `Component` (value, verdict, detail) and depends on nothing
else, so the batch pool can run them anywhere. The LLM judge is the one source that is NOT in this
registry: it needs a model backend and runs batched in the coordinator (see `judge.py`, `batch.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from duomind.rewards import code as code_reward
from duomind.rewards import math as math_reward
from duomind.rewards.config import RewardConfig
from duomind.rewards.format import format_score, length_penalty, repetition_penalty, split_think
from duomind.rewards.record import Record

JUDGE = "judge"


@dataclass(frozen=True)
class Component:
    """One source's score for one record. `value` None means the source could not score it."""

    value: float | None
    verdict: str | None = None
    detail: dict = field(default_factory=dict)


SourceFn = Callable[[Record, RewardConfig], Component]
SOURCES: dict[str, SourceFn] = {}


def register_source(name: str, fn: SourceFn) -> SourceFn:
    """Add a reward source; a name may be registered once."""
    if name in SOURCES or name == JUDGE:
        raise ValueError(f"reward source {name!r} is already registered; pick another name")
    SOURCES[name] = fn
    return fn


def _math(r: Record, cfg: RewardConfig) -> Component:
    if r.answer is None:
        return Component(None, None, {"error": "no reference answer"})
    res = math_reward.score(r.response, r.answer, cfg.math_timeout_s)
    return Component(res.value, res.verdict, {"extracted": res.extracted})


def _code(r: Record, cfg: RewardConfig) -> Component:
    if not r.tests:
        return Component(None, None, {"error": "no tests"})
    res = code_reward.score(r.response, r.tests, cfg.sandbox, cfg.code_all_or_nothing, cfg.isolation)
    return Component(res.value, res.verdict, {"tests": res.tests, "error": res.error, "isolation": res.isolation})


def _format(r: Record, cfg: RewardConfig) -> Component:
    res = format_score(r.response, r.mode)
    return Component(res.value, None, {"reason": res.reason, "mode": r.mode or "auto"})


def _repetition(r: Record, cfg: RewardConfig) -> Component:
    return Component(repetition_penalty(r.response, cfg.repetition_ngram, cfg.repetition_free))


def _length(r: Record, cfg: RewardConfig) -> Component:
    # the answer part only in fast mode; thinking counts too in slow mode, as it costs the same tokens
    text = split_think(r.response)[1] if r.mode == "fast" else r.response
    return Component(length_penalty(text, cfg.length_target, cfg.length_limit))


for _name, _fn in (("math", _math), ("code", _code), ("format", _format), ("repetition", _repetition),
                   ("length", _length)):
    register_source(_name, _fn)
