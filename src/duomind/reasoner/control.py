"""Mode control while decoding: what each next token may be, given the mode and what came so far.

One `ThinkingControl` per sequence; the decode loop calls `constrain(logits)` before choosing a token and
`observe(token)` after. Rules (Pangu Embedded, arXiv 2505.22375, Stage 2; budget and repair are *(design)*):

- fast: `<think>` and `</think>` are never chosen, so no empty think tags reach the answer.
- slow: the first token is `<think>`; inside the span the turn cannot end before `</think>`.
- auto: the model's own first token decides: `<think>` opens a span (then as slow), anything else is the
  answer (then as fast). With a calibrated `think_threshold` (`duomind.reasoner.router`) the span opens
  exactly when the model gives `<think>` at least that probability.
- budget: once the span holds `budget` tokens, `</think>` is forced and the model answers.
- repetition self-repair: when the tail of the span repeats a period-p pattern (`RepairConfig`), the token
  that would continue the loop is banned for one step, steering the model out; after `max_repairs`
  detections the span is closed instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from duomind.tokenizer import END_THINK, EOS, IM_END, MODES, THINK


@dataclass(frozen=True)
class RepairConfig:
    """When a thinking span counts as degenerate repetition, and what repair may do.

    Attributes:
        max_period: Longest repeating unit looked for (tokens).
        min_repeats: The unit must occur at least this many times in a row ...
        min_span: ... covering at least this many tokens (so short periods need more repeats).
        max_repairs: Detections steered out of by banning a token; the next one closes the span.
    """

    max_period: int = 32
    min_repeats: int = 3
    min_span: int = 24
    max_repairs: int = 2

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.min_repeats < 2 or self.min_span < 2 or self.max_repairs < 0:
            raise ValueError(f"invalid RepairConfig {self}: need max_period >= 1, min_repeats >= 2, "
                             "min_span >= 2, max_repairs >= 0.")


def repeating_period(tokens: list[int], cfg: RepairConfig) -> int | None:
    """The shortest period p whose repetition fills the tail of `tokens` (see RepairConfig), else None."""
    n = len(tokens)
    for p in range(1, cfg.max_period + 1):
        span = max(cfg.min_repeats * p, cfg.min_span)
        if span > n:
            break
        tail = tokens[n - span:]
        if tail[:-p] == tail[p:]:  # t[i] == t[i + p] across the whole tail
            return p
    return None


class ThinkingControl:
    """Per-sequence state machine over the thinking span (see the module docstring).

    Args:
        mode: "fast", "slow" or "auto".
        ids: Token ids from `duomind.tokenizer.special_ids` (needs `<think>` and `</think>` unless fast).
        budget: Most tokens inside the span (None: no limit but max_tokens).
        repair: Repetition self-repair settings (None: off).
        think_threshold: Auto mode thinks when P(`<think>`) as its first token reaches this (None: when
            `<think>` is the chosen token).
    """

    def __init__(self, mode: str, ids: dict[str, int | None], budget: int | None = None,
                 repair: RepairConfig | None = RepairConfig(), think_threshold: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {list(MODES)}.")
        self.think, self.end_think = ids.get(THINK), ids.get(END_THINK)
        if mode != "fast" and (self.think is None or self.end_think is None):
            raise ValueError(f"{mode} mode needs the {THINK} and {END_THINK} tokens, which this tokenizer lacks; "
                             "use mode fast, or a tokenizer from `duomind tokenizer train`.")
        if budget is not None and budget < 1:
            raise ValueError(f"thinking budget must be at least 1 token, got {budget}.")
        if think_threshold is not None:
            from duomind.reasoner.router import check_threshold

            check_threshold(think_threshold, "think_threshold")
        self.mode, self.budget, self.repair, self.threshold = mode, budget, repair, think_threshold
        self.enders = [i for i in (ids.get(IM_END), ids.get(EOS)) if i is not None]
        self.tags = [i for i in (self.think, self.end_think) if i is not None]
        # state: "start" (nothing yet), "thinking", "answer"
        self.state = "answer" if mode == "fast" else "start"
        self.chosen: str | None = "fast" if mode == "fast" else None  # what the sequence actually did
        self.thought: list[int] = []
        self.repairs = 0
        self.budget_hit = False
        self._ban: int | None = None
        self._close = False

    @property
    def thinking(self) -> bool:
        return self.state == "thinking"

    def forced(self) -> int | None:
        """The token the next step must produce, if the rules leave only one."""
        if self.state == "start" and self.mode == "slow":
            return self.think
        if self.state == "thinking" and (self._close or (self.budget is not None and len(self.thought) >= self.budget)):
            return self.end_think
        return None

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the rules to one sequence's (V,) next-token logits (in place; also returned)."""
        force = self.forced()
        if force is not None:
            return self._only(logits, force)
        banned: list[int] = []
        if self.state == "answer":
            banned += self.tags
        elif self.state == "start":  # auto: may open a span or answer, never close one it has not opened
            banned.append(self.end_think)
            if self.threshold is not None:
                if torch.softmax(logits.float(), -1)[self.think] >= self.threshold:
                    return self._only(logits, self.think)
                banned.append(self.think)
        else:  # thinking: no nested span, no end of turn before the span is closed
            banned += [self.think, *self.enders]
            if self._ban is not None:
                banned.append(self._ban)
        if banned:
            logits[banned] = float("-inf")
        return logits

    @staticmethod
    def _only(logits: torch.Tensor, token: int) -> torch.Tensor:
        keep = logits[token].clone()
        logits.fill_(float("-inf"))
        logits[token] = keep if torch.isfinite(keep) else 0.0
        return logits

    def observe(self, token: int) -> None:
        """Advance the state with the chosen token."""
        self._ban = None
        if self.state == "start":
            if token == self.think:
                self.state, self.chosen = "thinking", "slow"
            else:
                self.state, self.chosen = "answer", "fast"
            return
        if self.state != "thinking":
            return
        if token == self.end_think:
            self.budget_hit = self.budget is not None and len(self.thought) >= self.budget and not self._close
            self.state, self._close = "answer", False
            return
        self.thought.append(token)
        if self.repair is None:
            return
        period = repeating_period(self.thought, self.repair)
        if period is not None:
            self.repairs += 1
            if self.repairs > self.repair.max_repairs:
                self._close = True
            else:
                self._ban = self.thought[-period]  # the token that would continue the loop
