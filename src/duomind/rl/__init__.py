"""RL for reasoners (Pangu Embedded Stage 1b, arXiv 2505.22375): GRPO with MARS rewards on Ray, under a
latency-tolerant stale-synchronous scheduler with prioritised ready queues.

    from duomind.rl import RLConfig, train_rl
    summary = train_rl(RLConfig(policy="runs/sft", prompts="data/tasks.jsonl", staleness=1),
                       reward_fn=None)   # or any callable over sample dicts, see duomind.rl.reward

Modules: `grpo` (advantages, loss), `scheduler` (SSP + priority queue), `workers` (Ray actors),
`reward` (pluggable reward functions, MARS adapters), `loop` (the driver), `sim` (discrete-event
simulation), `cli` (`duomind rl`). Ray is imported only when a run starts (extra `duomind[rl]`).
"""

from __future__ import annotations

from duomind import lazy_exports

_LAZY = {
    "RLConfig": "duomind.rl.config",
    "train_rl": "duomind.rl.loop",
    "RLRun": "duomind.rl.loop",
    "SSPScheduler": "duomind.rl.scheduler",
    "Group": "duomind.rl.scheduler",
    "Sample": "duomind.rl.grpo",
    "grpo_loss": "duomind.rl.grpo",
    "group_advantages": "duomind.rl.grpo",
    "simulate": "duomind.rl.sim",
    "MarsReward": "duomind.rl.reward",
    "HttpReward": "duomind.rl.reward",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
