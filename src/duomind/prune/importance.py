"""Activation-based importance of every prunable unit, from forward passes over calibration data.

Minitron (arXiv 2407.14679) scores width by activations: a hidden channel by the mean |value| of the normed
hidden states that the linear layers read, an FFN neuron by the mean |value| of its activation (the input of
down_proj), an attention head by the mean L2 norm of its output (Pangu Light, arXiv 2505.20155, uses the same
head score for CLAP). Layers get two scores: ShortGPT's block influence BI = 1 - cos(input, output)
(arXiv 2403.03853) and the calibration-loss increase when the block is skipped. MoE experts are scored by
their routed-weighted output norms, their neurons like FFN neurons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from duomind.moe import MoELayer
from duomind.progress import progress_bar


@dataclass
class Importance:
    """Scores (higher = more important), all float64 on the CPU.

    Attributes:
        hidden: (d,) residual channels.
        heads: (L, H) query heads per layer; a KV group's score is the sum of its query heads'.
        ffn: layer -> (F,) dense MLP neurons.
        shared_ffn: layer -> (F_shared,) shared-expert neurons of MoE layers.
        experts: layer -> (N,) routed experts of MoE layers.
        expert_ffn: layer -> (N, F_e) neurons of every routed expert.
        block_influence: (L,) 1 - mean cos(block input, block output).
        loss_delta: (L,) calibration loss with the block skipped minus the full model's (None if not measured).
        base_loss: Calibration loss of the full model.
        tokens: Calibration tokens seen.
    """

    hidden: torch.Tensor
    heads: torch.Tensor
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    shared_ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    experts: dict[int, torch.Tensor] = field(default_factory=dict)
    expert_ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    block_influence: torch.Tensor | None = None
    loss_delta: torch.Tensor | None = None
    base_loss: float = float("nan")
    tokens: int = 0

    def layers(self, metric: str) -> torch.Tensor:
        """(L,) layer scores by "bi" (block influence) or "loss" (loss increase when skipped)."""
        if metric == "bi":
            return self.block_influence
        if metric == "loss":
            if self.loss_delta is None:
                raise ValueError("loss-delta layer scores were not measured; call measure(..., loss_delta=True).")
            return self.loss_delta
        raise ValueError(f"layer metric {metric!r} is not one of 'bi', 'loss'.")


def _add(store: dict, key, value: torch.Tensor) -> None:
    value = value.detach().double().cpu()
    store[key] = store[key] + value if key in store else value


def _moe_scores(layer: MoELayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) routed-weighted output norms and (N, F) summed |activation| of each expert on its own tokens."""
    flat = x.reshape(-1, x.shape[-1])
    routing = layer.router(flat)
    ex = layer.experts
    score = torch.zeros(ex.num_experts, dtype=torch.float64)
    neurons = torch.zeros(ex.num_experts, ex.ffn, dtype=torch.float64)
    for e in range(ex.num_experts):
        token, slot = (routing.experts == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        gate, up = F.linear(flat[token], ex.gate_up_proj[e]).chunk(2, dim=-1)
        act = ex.act(gate) * up  # (n, F)
        out = F.linear(act, ex.down_proj[e])
        score[e] = float((routing.weights[token, slot] * out.norm(dim=-1)).sum())
        neurons[e] = act.abs().sum(0).double()
    return score, neurons


@torch.no_grad()
def measure(model, batches: torch.Tensor, micro_batch: int = 8, loss_delta: bool = True,
            progress: bool = False) -> Importance:
    """Score hidden channels, heads, FFN neurons, experts and layers of a DuoMind `model` on `batches`.

    Steps: (1) one pass with hooks that sum |normed hidden states|, per-head output norms, |FFN activations|,
    expert scores and per-token cos(block input, output); (2) if `loss_delta`, one more pass per layer with
    that block skipped. All sums are divided by the token count.

    Args:
        model: A DuoMind model.
        batches: (N, T) token ids (see `calibration.calibration_batches`).
        micro_batch: Sequences per forward.
        loss_delta: Also measure the loss increase of skipping each layer (L extra passes).
        progress: Show a progress bar.
    """
    model.eval()
    cfg = model.config
    L, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    sums: dict = {}
    hooks = []

    def on_norm(_m, _args, out):
        _add(sums, "hidden", out.abs().flatten(0, -2).sum(0))

    def on_heads(i):
        def hook(_m, args):
            x = args[0]
            _add(sums, ("heads", i), x.reshape(*x.shape[:2], H, D).norm(dim=-1).sum((0, 1)))
        return hook

    def on_neurons(key):
        def hook(_m, args):
            _add(sums, key, args[0].abs().flatten(0, -2).sum(0))  # (B, T, F) or (T, F)
        return hook

    def on_moe(i):
        def hook(m, args):
            score, neurons = _moe_scores(m, args[0])
            _add(sums, ("experts", i), score)
            _add(sums, ("expert_ffn", i), neurons)
        return hook

    def on_block(i):
        def hook(_m, args, out):
            cos = F.cosine_similarity(args[0].float(), out.float(), dim=-1)
            _add(sums, ("bi", i), (1 - cos).sum())
        return hook

    for i, layer in enumerate(model.layers):
        hooks += [layer.attn_norm.register_forward_hook(on_norm), layer.mlp_norm.register_forward_hook(on_norm),
                  layer.attn.o_proj.register_forward_pre_hook(on_heads(i)), layer.register_forward_hook(on_block(i))]
        if isinstance(layer.mlp, MoELayer):
            hooks.append(layer.mlp.register_forward_pre_hook(on_moe(i)))
            if layer.mlp.shared is not None:
                hooks.append(layer.mlp.shared.down_proj.register_forward_pre_hook(on_neurons(("shared", i))))
        else:
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_neurons(("ffn", i))))
    hooks.append(model.norm.register_forward_hook(on_norm))
    passes = 1 + (L if loss_delta else 0)
    with progress_bar("importance", passes, enabled=progress, unit="pass") as advance:
        try:
            base = _loss(model, batches, micro_batch)
        finally:
            for h in hooks:
                h.remove()
        advance(1)
        deltas = None
        if loss_delta:
            deltas = torch.zeros(L, dtype=torch.float64)
            for i, layer in enumerate(model.layers):
                skip = layer.register_forward_hook(lambda _m, args, _out: args[0])
                try:
                    deltas[i] = _loss(model, batches, micro_batch) - base
                finally:
                    skip.remove()
                advance(1)
    n = batches.numel()
    per = {k: v / n for k, v in sums.items()}
    pick = {name: {i: per[(name, i)] for i in range(L) if (name, i) in per}
            for name in ("ffn", "shared", "experts", "expert_ffn")}
    return Importance(hidden=per["hidden"], heads=torch.stack([per[("heads", i)] for i in range(L)]),
                      ffn=pick["ffn"], shared_ffn=pick["shared"], experts=pick["experts"],
                      expert_ffn=pick["expert_ffn"],
                      block_influence=torch.stack([per[("bi", i)] for i in range(L)]).reshape(L),
                      loss_delta=deltas, base_loss=base, tokens=n)


def _loss(model, batches: torch.Tensor, micro_batch: int) -> float:
    """Mean next-token cross-entropy of `model` over `batches`."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for s in range(0, len(batches), micro_batch):
        ids = batches[s:s + micro_batch].to(device)
        logits = model(ids).logits
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum"))
        count += ids[:, 1:].numel()
    return total / max(count, 1)
