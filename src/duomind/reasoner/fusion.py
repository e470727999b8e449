"""Fusion data for the dual-system reasoner: fast and slow targets, auto labels from the student itself.

Pangu Embedded (arXiv 2505.22375), Stage 2: one model answers fast (directly) or slow (thinking first) on
request, and in auto mode chooses by itself, having learnt the choice from a curated fusion of fast and
slow data. Design choices (specs/pangu-embedded.md):

1. Pass rate: sample the student N times per training problem in fast mode (and, for the `gain` rule, in
   slow mode); verify with MARS.
2. Auto label, one of two rules. `pass_rate` (the paper's): fast when the fast pass rate reaches a threshold
   (the student can already answer without thinking). `gain`: slow only where thinking raises the pass
   rate by at least a margin, so problems the student cannot solve either way are answered fast too; this
   is the optimum of AdaptThink's constrained objective (fewest thoughts at no loss of accuracy), taken as
   labels instead of learnt by RL.
3. Fusion records: every labelled problem gives a fast chat, a slow chat (manual modes keep working) and an
   auto chat whose target is the labelled one; in auto mode the model's first token is `<think>` or not.

For a later RL stage, `adaptive_reward` is the length-aware reward of AdaptThink (arXiv 2505.13417):
skipping thought earns a bonus only while accuracy stays at the slow-mode reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from duomind.tasks import Task, sft_record

LABELS = ("fast", "slow")


def pass_rates(model, tok, tasks: Sequence[Task], mode: str, samples: int, temperature: float, max_new_tokens: int,
               batch_size: int, seed: int, partial: Path, advance: Callable[[int], None]) -> list[float]:
    """The student's pass rate in `mode` on each task over `samples` verified samples (resumable via `partial`)."""
    from duomind.distill.loop import Verifier, sample_chunked

    verifier = Verifier()
    try:
        rows = sample_chunked(model, tok, list(tasks), mode, samples, temperature, None, max_new_tokens,
                              batch_size, seed, partial, verifier, advance)
    finally:
        verifier.close()
    return [sum(r["correct"]) / len(r["correct"]) for r in rows]


def auto_label(pass_rate: float, threshold: float) -> str:
    """`fast` when the student solves the problem without thinking often enough, else `slow`."""
    if not 0.0 <= pass_rate <= 1.0:
        raise ValueError(f"pass_rate must lie in [0, 1], got {pass_rate}")
    return "fast" if pass_rate >= threshold else "slow"


def gain_label(fast_rate: float, slow_rate: float, min_gain: float) -> str:
    """`slow` only when thinking raises the pass rate by at least `min_gain`, else `fast`."""
    for name, r in (("fast_rate", fast_rate), ("slow_rate", slow_rate)):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {r}")
    return "slow" if slow_rate - fast_rate >= min_gain else "fast"


def fusion_records(tasks: Sequence[Task], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Fast, slow and auto chats per task; the auto chat's target is the labelled mode's answer."""
    if len(tasks) != len(labels):
        raise ValueError(f"{len(tasks)} tasks but {len(labels)} labels: label every task once.")
    out = []
    for task, label in zip(tasks, labels):
        if label not in LABELS:
            raise ValueError(f"auto label must be one of {LABELS}, got {label!r} for task {task.id}")
        out += [sft_record(task, "fast"), sft_record(task, "slow"), {**sft_record(task, label), "mode": "auto",
                                                                      "auto_label": label}]
    return out


def adaptive_reward(correct: bool, thought: bool, reference_accuracy: float, delta: float = 0.05) -> float:
    """AdaptThink's reward (arXiv 2505.13417): correctness above the slow reference, plus delta for not thinking.

    r = 1[correct] - reference_accuracy + delta * 1[no thinking]. With group-relative advantages this
    prefers the fast answer only where it is as good as thinking: a wrong fast answer loses 1 - delta
    against a right slow one.
    """
    if not 0.0 <= reference_accuracy <= 1.0:
        raise ValueError(f"reference_accuracy must lie in [0, 1], got {reference_accuracy}")
    return float(correct) - reference_accuracy + (0.0 if thought else delta)
