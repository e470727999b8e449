"""`duomind train`: flags and `--config recipes/x.yaml` map onto `TrainConfig` fields."""

from __future__ import annotations

from duomind.config import TrainConfig


def train_cli(cfg: TrainConfig) -> None:
    """Pre-train, fine-tune (SFT) or distil (KD) a model; resumes an existing run in out_dir."""
    from duomind.train.loop import train

    path = train(cfg)
    print(f"final checkpoint: {path}")
