"""Training: one loop for pre-training, SFT and KD; atomic safetensors checkpoints; metrics."""

from duomind.train.checkpoint import CheckpointError, latest_checkpoint, load_model, save_checkpoint
from duomind.train.loop import TrainingDiverged, train

__all__ = ["train", "TrainingDiverged", "CheckpointError", "load_model", "latest_checkpoint", "save_checkpoint"]
