"""Expert-parallel load imbalance: how much more work the busiest device gets than the mean.

Under expert parallelism the all-to-all synchronises every MoE layer, so the most loaded device sets
the pace. MoE (softmax top-k) routes each token to k experts anywhere, so device loads fluctuate; MoGE
(arXiv 2505.21411) takes exactly K' experts from each of M groups, so when every device holds whole
groups each device gets exactly T * K' * (M / ep) assignments: imbalance 1 by construction.

Router model: expert e has a popularity logit b_e ~ skew * N(0, 1) (fixed by the seed; the trained
router's preference), and each token picks its experts by Gumbel-top-k on b, i.e. k draws without
replacement from softmax(b) (within each group for MoGE). Device loads then follow a multinomial over
the devices' summed inclusion probabilities; we report E[max_d load_d] / mean_d load_d.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8192)
def max_load_factor(num_experts: int, top_k: int, ep: int, tokens: int, skew: float = 0.0,
                    groups: int = 1, seed: int = 0, draws: int = 64) -> float:
    """E[max device load] / mean device load for `tokens` tokens routed over `ep` expert-parallel ranks.

    Args:
        num_experts: Routed experts N (placed contiguously, N / ep per device).
        top_k: Experts per token K.
        ep: Expert-parallel ranks.
        tokens: Tokens routed together in one MoE layer step, over the whole EP group.
        skew: Std of the per-expert popularity logits (0 = uniform router).
        groups: MoGE groups M (1 = plain MoE); each token takes K / M experts per group.
        seed: Seed for popularity, placement and the sampled loads.
        draws: Monte-Carlo draws of the per-device loads.
    """
    if ep <= 1 or tokens <= 0:
        return 1.0
    per_dev = num_experts // ep
    if groups > 1 and groups % ep == 0:
        return 1.0  # MoGE, whole groups per device: exact balance
    rng = np.random.default_rng(seed)
    incl = _inclusion(num_experts, top_k, skew, groups, seed)  # (N,) expected picks per token, sums to K
    if groups > 1:  # a group spans several devices: each group's quota is fixed, random inside the group
        size, k_g = num_experts // groups, top_k // groups
        per_expert = np.concatenate(
            [rng.multinomial(tokens * k_g, incl[g * size:(g + 1) * size] / k_g, size=draws) for g in range(groups)],
            axis=1)  # (draws, N)
        loads = per_expert.reshape(draws, ep, per_dev).sum(-1)
    else:
        dev = incl.reshape(ep, per_dev).sum(1)  # expected picks per token per device
        loads = rng.multinomial(tokens * top_k, dev / dev.sum(), size=draws)
    mean = tokens * top_k / ep
    return float(loads.max(1).mean() / mean)


@lru_cache(maxsize=1024)
def _inclusion(num_experts: int, top_k: int, skew: float, groups: int, seed: int, samples: int = 2048) -> np.ndarray:
    """Per-expert expected picks per token under Gumbel-top-k routing on popularity logits."""
    if skew == 0:
        return np.full(num_experts, top_k / num_experts)
    rng = np.random.default_rng(seed)
    bias = skew * rng.standard_normal(num_experts)
    scores = bias + rng.gumbel(size=(samples, num_experts))  # (S, N)
    counts = np.zeros(num_experts)
    size, k = num_experts // groups, top_k // groups
    for g in range(groups):
        block = scores[:, g * size:(g + 1) * size]
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] + g * size
        counts += np.bincount(top.ravel(), minlength=num_experts)
    return counts / samples

