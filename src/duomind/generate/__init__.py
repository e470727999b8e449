"""Decoding: sampling, the KV-cache decode loop, and (in later modules) speculative decoding."""

from duomind.generate.decode import generate, left_pad
from duomind.generate.sampling import filter_logits, probabilities, sample

__all__ = ["generate", "left_pad", "sample", "filter_logits", "probabilities"]
