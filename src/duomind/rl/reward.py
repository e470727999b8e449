"""Rewards for RL: a pluggable callable over samples, with MARS (`duomind.rewards`) as the default.

A reward function takes a list of sample dicts and returns one entry per sample::

    sample = {"id": "17/2", "task": {...task record...}, "mode": "slow", "response": "<think>...",
              "tokens": 41}
    entry  = 0.5  |  None (scoring failed)  |  {"reward": 0.5, "correct": True, "components": {...}}

Exceptions never reach the learner: a call that raises is retried sample by sample, and every sample
that still raises (or times out, see `duomind.rl.loop`) becomes a per-sample failure (reward None, left
out of the loss). An object with `state_dict()` / `load_state_dict()` has its state checkpointed.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

RewardFn = Callable[[list[dict]], list]


def as_score(entry) -> dict:
    """One reward function output as {"reward", "correct", "components", "error"}."""
    if entry is None:
        return {"reward": None, "correct": None, "components": {}, "error": "reward function returned None"}
    if isinstance(entry, bool) or not isinstance(entry, (int, float, dict)):
        raise TypeError(f"a reward function must return a float, a dict with 'reward', or None; got {entry!r}")
    if not isinstance(entry, dict):
        return {"reward": float(entry), "correct": None, "components": {}, "error": None}
    reward = entry.get("reward")
    return {"reward": None if reward is None else float(reward), "correct": entry.get("correct"),
            "components": dict(entry.get("components") or {}), "error": entry.get("error")}


def score_safely(fn: RewardFn, samples: list[dict]) -> list[dict]:
    """Apply `fn`; a failing call is retried per sample so only the samples that fail are lost."""
    try:
        out = fn(samples)
        if len(out) != len(samples):
            raise ValueError(f"reward function returned {len(out)} entries for {len(samples)} samples")
        return [as_score(e) for e in out]
    except Exception:  # noqa: BLE001 - any reward error becomes per-sample failures, never a learner crash
        scores = []
        for s in samples:
            try:
                scores.append(as_score(fn([s])[0]))
            except Exception as e:  # noqa: BLE001
                scores.append({"reward": None, "correct": None, "components": {}, "error": f"{type(e).__name__}: {e}"})
        return scores


def _verdicts(results: list[dict]) -> list[dict]:
    from duomind.rewards.batch import CORRECTNESS

    out = []
    for r in results:
        if r.get("verdict") == "invalid":
            out.append({"reward": None, "error": r.get("detail", {}).get("error", "invalid record")})
            continue
        main = r["components"].get(CORRECTNESS.get(r["task"], ""))
        out.append({"reward": r["reward"], "correct": main == 1.0, "components": r["components"]})
    return out


class MarsReward:
    """MARS scoring in-process (math verifier, code sandbox, format, repetition; arXiv 2505.22375).

    The scorer is built where the object is first used (e.g. inside the reward actor), so the object
    itself pickles to Ray as just its config."""

    def __init__(self, cfg=None):
        from duomind.rewards.config import RewardConfig

        self.cfg = cfg or RewardConfig()
        self._scorer = None

    @property
    def scorer(self):
        if self._scorer is None:
            from duomind.rewards.batch import Scorer

            self._scorer = Scorer(self.cfg, workers=0)
        return self._scorer

    def warmup(self) -> None:
        """Build the scorer and load sympy / math-verify before the first timed call."""
        from duomind.rewards import math as math_reward

        math_reward.equivalent("1/2", "0.5")
        _ = self.scorer

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "_scorer": None}

    def __call__(self, samples: list[dict]) -> list[dict]:
        return _verdicts(self.scorer.score([record(s) for s in samples]))

    def state_dict(self) -> dict:
        return self.scorer.mars.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scorer.mars.load_state_dict(state)


class HttpReward:
    """MARS scoring through `duomind reward serve` (POST {url}/score); a timeout fails the call."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def __call__(self, samples: list[dict]) -> list[dict]:
        body = json.dumps({"records": [record(s) for s in samples]}).encode()
        req = urllib.request.Request(f"{self.url}/score", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return _verdicts(json.loads(resp.read())["results"])


def record(sample: dict) -> dict:
    """The `duomind.rewards` record of a sample (code runs its tests, every other task is math)."""
    from duomind.distill.loop import reward_record
    from duomind.tasks import as_task

    return reward_record(as_task(sample["task"]), sample["response"], sample["mode"], sample["id"])


def make_reward(kind: str, rewards_cfg=None, url: str = "", timeout_s: float = 30.0) -> RewardFn:
    """The reward function a config names: "mars" (in-process) or "http" (the reward server)."""
    if kind == "mars":
        return MarsReward(rewards_cfg)
    if kind == "http":
        if not url:
            raise ValueError("reward='http' needs reward_url (where `duomind reward serve` listens)")
        return HttpReward(url, timeout_s)
    raise ValueError(f"reward={kind!r}; use 'mars' (in-process) or 'http' (a `duomind reward serve` URL)")
