"""`RLConfig`: one dataclass for `duomind rl --config recipes/rl/x.yaml` (no torch import at load)."""

from __future__ import annotations

from dataclasses import dataclass, field

from duomind.rewards.config import RewardConfig
from duomind.rl.scheduler import STALE_POLICIES


def _slow_only() -> dict[str, float]:
    return {"slow": 1.0}


def reward_config(data: dict) -> RewardConfig:
    """A `RewardConfig` from a (YAML) mapping, nested sandbox and judge sections included."""
    from duomind.config import from_dict
    from duomind.rewards.config import JudgeConfig
    from duomind.rewards.sandbox import Limits

    data = dict(data)
    if isinstance(data.get("sandbox"), dict):
        data["sandbox"] = from_dict(Limits, data["sandbox"], "rewards.sandbox")
    if isinstance(data.get("judge"), dict):
        data["judge"] = from_dict(JudgeConfig, data["judge"], "rewards.judge")
    return from_dict(RewardConfig, data, "rewards")


@dataclass
class RLConfig:
    """GRPO with MARS rewards and the stale-synchronous scheduler (Pangu Embedded, arXiv 2505.22375).

    Args:
        policy: Starting checkpoint (a run directory or step-XXXXXX); also the tokenizer.
        prompts: Task records (JSONL, e.g. tasks.jsonl from `duomind data make`); each needs its answer.
        out_dir: Run directory: checkpoints (resumed when present), metrics.jsonl, rl.png, summary.json.
        eval_data: Held-out task records; greedy accuracy is measured before and after training.
        eval_max: Evaluate at most this many held-out records.
        eval_mode: Reasoning mode of the evaluation prompts.
        mode_mix: Share of prompts asked in each reasoning mode (fast, slow, auto); e.g. {fast: 0.75, slow: 0.25}.
        group_size: Responses per prompt G.
        batch_groups: Groups per learner step B.
        max_steps: Learner steps (policy versions) to train to.
        staleness: SSP bound s: samples may come from a policy at most s versions old; 0 is synchronous.
        stale: What happens to a group beyond the bound: drop it or regenerate its prompt.
        band: Pass-rate band counted as medium difficulty by the priority queue.
        lr: Learning rate (AdamW, constant).
        weight_decay: AdamW weight decay.
        grad_clip: Gradient-norm clip (0: none).
        clip_eps: PPO ratio clip epsilon.
        kl_coef: Weight of KL(policy || reference); 0 skips the reference model.
        scale_std: Divide group advantages by the group's reward std.
        temperature: Sampling temperature (log-probs are of this distribution).
        max_new_tokens: Response budget.
        reward: "mars" (in-process MARS scoring in a reward actor) or "http" (`duomind reward serve`).
        reward_url: Base URL of the reward server (reward: http).
        reward_timeout_s: A group not scored within this time fails (per-sample failures, never a crash).
        rewards: MARS settings (weights per task type, normalisation, verifiers).
        workers: Rollout worker actors.
        worker_threads: Torch threads per rollout worker.
        threads: Torch threads of the learner (0: leave as is).
        ray_address: Join an existing Ray cluster (e.g. "auto" or "ray://host:10001"); empty starts a local one.
        num_cpus: CPUs a local Ray instance advertises (default: workers + 1).
        object_store_mb: Object store cap of a local Ray instance.
        save_every: Checkpoint every this many steps (and at the end).
        keep_last: Checkpoints kept.
        seed: Seed of the prompt order, mode choice and sampling.
        progress: Show the progress bar.
    """

    policy: str = ""
    prompts: str = ""
    out_dir: str = "runs/rl"
    eval_data: str | None = None
    eval_max: int = 200
    eval_mode: str = "slow"
    mode_mix: dict[str, float] = field(default_factory=_slow_only)
    group_size: int = 4
    batch_groups: int = 2
    max_steps: int = 20
    staleness: int = 1
    stale: str = "drop"
    band: tuple[float, float] = (0.2, 0.8)
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    scale_std: bool = True
    temperature: float = 1.0
    max_new_tokens: int = 128
    reward: str = "mars"
    reward_url: str = ""
    reward_timeout_s: float = 60.0
    rewards: RewardConfig = field(default_factory=RewardConfig)
    workers: int = 2
    worker_threads: int = 1
    threads: int = 1
    ray_address: str = ""
    num_cpus: int | None = None
    object_store_mb: int = 256
    save_every: int = 10
    keep_last: int = 2
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rewards, dict):
            self.rewards = reward_config(self.rewards)
        self.band = tuple(self.band)
        if not self.policy:
            raise ValueError("policy is empty: set `policy: CHECKPOINT_DIR` (the model RL starts from).")
        if not self.prompts:
            raise ValueError("prompts is empty: set `prompts: tasks.jsonl` (task records with reference answers; "
                             "make some with `duomind data make`).")
        if self.stale not in STALE_POLICIES:
            raise ValueError(f"stale={self.stale!r}; use one of {list(STALE_POLICIES)}")
        bad = {m: w for m, w in self.mode_mix.items() if m not in ("fast", "slow", "auto") or w < 0}
        if bad or not self.mode_mix or sum(self.mode_mix.values()) <= 0:
            raise ValueError(f"mode_mix={self.mode_mix} must give non-negative weights to fast, slow and/or auto "
                             "with a positive total")
        for name in ("group_size", "batch_groups", "max_steps", "workers", "worker_threads", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0 (0 is synchronous), got {self.staleness}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0: GRPO needs sampled groups (and their log-probs)")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: a group-relative advantage needs at least two responses")
