"""Ray actors: rollout workers that sample groups with the decode loop, and the reward scorer.

Weights travel by version through the object store: each job carries a reference to the newest published
state dict (wrapped in a list, so Ray does not fetch it unless the worker's copy is older). A worker
therefore picks up the newest policy between generations, never in the middle of one.
"""

from __future__ import annotations

import os
import time

INSTALL_HINT = "duomind rl needs Ray: install the extra with `pip install 'duomind[rl]'`."


def require_ray():
    """Import Ray, or fail with the command that installs it."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(INSTALL_HINT) from e
    return ray


class RolloutWorker:
    """Generates G responses to one prompt and records their behaviour log-probabilities."""

    def __init__(self, policy: str, threads: int, max_new_tokens: int, temperature: float):
        import torch

        torch.set_num_threads(threads)
        import duomind.distill.loop  # noqa: F401  (imported now, not inside the first timed generation)
        import duomind.generate  # noqa: F401
        from duomind.generate.cli import stop_ids
        from duomind.tokenizer import load_tokenizer
        from duomind.train.checkpoint import load_model

        self.model = load_model(policy)
        self.tok = load_tokenizer(policy)
        self.stops = stop_ids(self.tok)
        cfg = self.model.config
        self.pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.version = -1

    def ready(self) -> int:
        return os.getpid()

    def generate(self, job: dict, weights: list, version: int) -> dict:
        """Sample a group for `job` with policy `version` (loading its weights if they are newer)."""
        import ray

        from duomind.distill.loop import reply_text
        from duomind.generate import generate
        from duomind.rl.grpo import behaviour_logprobs

        t0 = time.perf_counter()
        if version != self.version:
            self.model.load_state_dict(ray.get(weights[0]))
            self.version = version
        prompts = [job["prompt_ids"]] * job["group_size"]
        out = generate(self.model, prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                       stop_tokens=self.stops, seed=job["seed"])
        logprobs = behaviour_logprobs(self.model, job["prompt_ids"], out, self.pad, self.temperature)
        return {"job": job["job"], "version": version, "responses": out, "logprobs": logprobs,
                "texts": [reply_text(self.tok, o) for o in out], "seconds": time.perf_counter() - t0,
                "pid": os.getpid()}


class RewardWorker:
    """Scores samples with a reward function (MARS by default); threaded, so one slow call blocks no other."""

    def __init__(self, fn):
        import torch

        torch.set_num_threads(1)
        self.fn = fn
        if hasattr(fn, "warmup"):
            fn.warmup()

    def ready(self) -> int:
        return os.getpid()

    def score(self, samples: list[dict]) -> list[dict]:
        from duomind.rl.reward import score_safely

        t0 = time.perf_counter()
        scores = score_safely(self.fn, samples)
        for s in scores:
            s["seconds"] = time.perf_counter() - t0
        return scores

    def state(self) -> dict | None:
        return self.fn.state_dict() if hasattr(self.fn, "state_dict") else None

    def load_state(self, state: dict | None) -> None:
        if state is not None and hasattr(self.fn, "load_state_dict"):
            self.fn.load_state_dict(state)


def rollout_actor(ray, policy: str, threads: int, max_new_tokens: int, temperature: float):
    return ray.remote(num_cpus=0)(RolloutWorker).remote(policy, threads, max_new_tokens, temperature)


def reward_actor(ray, fn, concurrency: int = 4):
    return ray.remote(num_cpus=0, max_concurrency=concurrency)(RewardWorker).remote(fn)
