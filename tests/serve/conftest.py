"""Serving fixtures: a tiny random checkpoint on disk (one torch thread: the engine runs its own thread)."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer DuoMind saved with its tokenizer, as `duomind serve` loads it."""
    path = tmp_path_factory.mktemp("ckpt")
    tiny_model(len(tiny_tokenizer)).save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path
