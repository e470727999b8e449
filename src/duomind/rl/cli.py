"""`duomind rl --config recipes/rl/x.yaml`: GRPO with MARS rewards under the SSP scheduler, on Ray."""

from __future__ import annotations

from duomind.rl.config import RLConfig


def rl_cli(cfg: RLConfig) -> dict:
    """RL (GRPO) with MARS rewards and the stale-synchronous scheduler on Ray (see docs/rl.md)."""
    from duomind.rl.loop import train_rl

    summary = train_rl(cfg)
    acc = ""
    if summary["accuracy_before"] and summary["accuracy_after"]:
        acc = f", held-out accuracy {summary['accuracy_before']['accuracy']:.3f} -> " \
              f"{summary['accuracy_after']['accuracy']:.3f}"
    print(f"{summary['steps']} steps, {summary['samples_per_s']:.2f} samples/s, learner idle "
          f"{summary['learner_idle_fraction']:.0%}{acc}; run in {cfg.out_dir}")
    return summary
