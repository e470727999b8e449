"""MARS: combine reward sources with per-task weights and adaptive normalisation.

Multi-source Adaptive Reward System, Pangu Embedded (arXiv 2505.22375). The paper gives the idea
(deterministic verifiers, test execution and lightweight LLM evaluators, task-specific and dynamic);
the mechanics here are DuoMind's design:

1. the task type picks the sources and their weights (`RewardConfig.weights`);
2. each (task, source) keeps running statistics of its raw values: exact mean/variance for the
   first `norm_window` observations, then exponential with horizon `norm_window`, so they follow
   the policy as it improves;
3. after `norm_warmup` observations a source is normalised: z = (x - mean) / max(std, min_std),
   clipped to +-clip; before that its raw value is used;
4. reward = sum of weight * (normalised) value over the sources that scored the record;
5. every raw component, its normalised value and weight are reported.

Normalising BEFORE updating makes a batch's rewards depend only on what came before it, so
scoring the same records in the same order gives the same rewards.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from duomind.rewards.config import RewardConfig


@dataclass
class RunningStat:
    """Mean and variance of a stream: exact at first, exponential after `window` values."""

    count: int = 0
    mean: float = 0.0
    var: float = 0.0

    def update(self, x: float, window: int) -> None:
        self.count += 1
        alpha = 1.0 / min(self.count, window)
        delta = x - self.mean
        self.mean += alpha * delta
        # Welford for alpha = 1/n, the exponential analogue after the window fills
        self.var = (1 - alpha) * (self.var + alpha * delta * delta)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))


class Mars:
    """Stateful combiner: one per training run or service; thread-safe."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.stats: dict[str, RunningStat] = {}
        self._lock = threading.Lock()

    def combine(self, task: str, components: dict[str, float | None]) -> tuple[float, dict[str, float]]:
        """Weighted, normalised reward for one record; also returns each normalised component.

        Args:
            task: the record's task type.
            components: raw value per source (None: the source could not score this record).

        Returns:
            (reward, normalised value per source that contributed).
        """
        cfg, weights = self.cfg, self.cfg.weights.get(task, {})
        reward, normalized = 0.0, {}
        with self._lock:
            for name, value in components.items():
                if value is None:
                    continue
                stat = self.stats.setdefault(f"{task}/{name}", RunningStat())
                z = value
                if cfg.normalize and stat.count >= cfg.norm_warmup:
                    z = (value - stat.mean) / max(stat.std, cfg.norm_min_std)
                    z = max(-cfg.norm_clip, min(cfg.norm_clip, z))
                stat.update(value, cfg.norm_window)
                normalized[name] = z
                reward += weights.get(name, 0.0) * z
        return reward, normalized

    def state_dict(self) -> dict:
        """Running statistics, to resume normalisation in a later run."""
        with self._lock:
            return {k: {"count": s.count, "mean": s.mean, "var": s.var} for k, s in self.stats.items()}

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            self.stats = {k: RunningStat(int(v["count"]), float(v["mean"]), float(v["var"])) for k, v in state.items()}
