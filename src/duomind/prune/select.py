"""Which units fill the pruned shape: the most important channels, layers, KV groups, heads, neurons, experts.

A `Selection` names kept units by their index in the original model, so `ops.apply` can slice every tensor.
Attention is chosen per KV group, GQA-consistently: a kept group keeps its K/V head and its best query heads.
With CLAP (Pangu Light, arXiv 2505.20155) a kept layer may also take KV groups (with their query heads) from
the removed layers right after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from duomind.config import ModelConfig
from duomind.prune.importance import Importance


def top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores, in ascending index order (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


@dataclass
class HeadGroup:
    """One kept KV group: taken from layer `source`, group `group`, with these query heads (0..rep-1)."""

    source: int
    group: int
    queries: list[int]


@dataclass
class Selection:
    """Kept units, by original index. `heads`, `ffn`, `experts` and `expert_ffn` are keyed by kept layer."""

    hidden: list[int]
    layers: list[int]
    heads: dict[int, list[HeadGroup]] = field(default_factory=dict)
    ffn: dict[int, list[int]] = field(default_factory=dict)
    shared_ffn: dict[int, list[int]] = field(default_factory=dict)
    experts: dict[int, list[int]] = field(default_factory=dict)
    expert_ffn: dict[int, list[list[int]]] = field(default_factory=dict)

    def moved_heads(self) -> dict[int, list[HeadGroup]]:
        """Per kept layer, the groups CLAP brought in from removed layers."""
        return {i: [g for g in gs if g.source != i] for i, gs in self.heads.items()
                if any(g.source != i for g in gs)}


def clap_donors(kept: list[int], num_layers: int) -> dict[int, list[int]]:
    """Removed layer -> the kept layer that receives its heads: the nearest kept layer before it (CLAP),
    or after it for removed layers in front of the first kept one."""
    donors: dict[int, list[int]] = {i: [] for i in kept}
    for r in range(num_layers):
        if r in donors:
            continue
        before = [k for k in kept if k < r]
        donors[before[-1] if before else kept[0]].append(r)
    return donors


def choose(cfg: ModelConfig, new: ModelConfig, imp: Importance, layer_metric: str = "loss",
           clap: bool = False) -> Selection:
    """Fill `new`'s shape from `cfg`'s units by importance.

    Steps: (1) top hidden channels; (2) top layers by `layer_metric`; (3) per kept layer, within every KV group
    the top query heads, then the top KV groups by the summed score of those heads, candidates being the
    layer's own groups plus, with `clap`, the groups of the removed layers it receives (`clap_donors`);
    (4) top FFN neurons; (5) MoE: top experts (MoGE: the same number per group) and their top neurons.
    """
    rep_old = cfg.num_attention_heads // cfg.num_key_value_heads
    rep = new.num_attention_heads // new.num_key_value_heads
    layers = top(imp.layers(layer_metric), new.num_hidden_layers)
    sel = Selection(hidden=top(imp.hidden, new.hidden_size), layers=layers)
    donors = clap_donors(layers, cfg.num_hidden_layers) if clap else {i: [] for i in layers}
    for i in layers:
        candidates = []
        for src in [i, *donors[i]]:
            scores = imp.heads[src].view(cfg.num_key_value_heads, rep_old)
            for g in range(cfg.num_key_value_heads):
                q = top(scores[g], rep)
                candidates.append((float(scores[g][q].sum()), HeadGroup(src, g, q)))
        ranked = sorted(range(len(candidates)), key=lambda c: (-candidates[c][0], c))[:new.num_key_value_heads]
        sel.heads[i] = [candidates[c][1] for c in sorted(ranked)]
        if i in imp.ffn:
            sel.ffn[i] = top(imp.ffn[i], new.intermediate_size)
        if i in imp.experts:
            groups, n_new = cfg.expert_groups, new.num_experts
            size, keep = cfg.num_experts // groups, n_new // groups
            kept = []
            for g in range(groups):  # the same number from every group keeps MoGE's device balance
                kept += [g * size + e for e in top(imp.experts[i][g * size:(g + 1) * size], keep)]
            sel.experts[i] = kept
            sel.expert_ffn[i] = [top(imp.expert_ffn[i][e], new.moe_intermediate_size) for e in kept]
        if i in imp.shared_ffn:
            sel.shared_ffn[i] = top(imp.shared_ffn[i], new.num_shared_experts * new.moe_intermediate_size)
    return sel


def keep_all(cfg: ModelConfig) -> Selection:
    """The selection that keeps every unit of `cfg` (pruning with it must return the same model)."""
    L, kv, rep = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    sel = Selection(hidden=list(range(cfg.hidden_size)), layers=list(range(L)))
    for i in range(L):
        sel.heads[i] = [HeadGroup(i, g, list(range(rep))) for g in range(kv)]
        if cfg.is_moe_layer(i):
            sel.experts[i] = list(range(cfg.num_experts))
            sel.expert_ffn[i] = [list(range(cfg.moe_intermediate_size))] * cfg.num_experts
            if cfg.num_shared_experts:
                sel.shared_ffn[i] = list(range(cfg.num_shared_experts * cfg.moe_intermediate_size))
        else:
            sel.ffn[i] = list(range(cfg.intermediate_size))
    return sel
