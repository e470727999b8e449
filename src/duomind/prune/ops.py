"""Structured pruning ops: slice every tensor a pruned dimension appears in, build the smaller model.

Dimensions and where they live (DuoMind tensor names)::

    hidden d   embed (V, d) cols · lm_head (V, d) cols · every d-wide RMSNorm gain · q/k/v in-columns ·
               o_proj out-rows (+ bias) · gate/up in-columns · down out-rows (+ bias) · router (N, d) ·
               experts gate_up (N, 2F, d) and down (N, d, F)
    heads      q rows per query head, k/v rows per KV group, o_proj columns per query head, q/k/v biases
    ffn F      gate/up rows (+ biases), down columns
    experts    router rows, expert_scale / expert_bias, the leading N of the stacked expert tensors
    layers     whole blocks; `window_layers` and `first_dense_layers` are renumbered

SLNP (Stabilized LayerNorm Pruning, Pangu Light arXiv 2505.20155) optionally rescales every kept d-wide gain
so its L2 norm stays what it was: gamma' = gamma[kept] * ||gamma|| / ||gamma[kept]||.
"""

from __future__ import annotations

import torch

from duomind.config import ModelConfig
from duomind.prune.select import Selection


def slnp(gain: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """SLNP: the kept entries of an RMSNorm gain, rescaled to the full gain's L2 norm."""
    kept = gain[keep]
    norm = kept.float().norm()
    if norm == 0:
        return kept.clone()
    return (kept.float() * (gain.float().norm() / norm)).to(gain.dtype)


def final_config(cfg: ModelConfig, new: ModelConfig, sel: Selection) -> ModelConfig:
    """`new` with the layer-indexed fields renumbered for the layers `sel` keeps."""
    fields = new.to_dict()
    if cfg.window_layers is not None:
        fields["window_layers"] = [n for n, i in enumerate(sel.layers) if i in cfg.window_layers]
    if cfg.mlp_type != "dense":
        fields["first_dense_layers"] = sum(i < cfg.first_dense_layers for i in sel.layers)
    return ModelConfig(**fields)


def _heads_rows(group, rep: int, head_dim: int) -> tuple[list[int], list[int]]:
    """Row indices of a kept group's query heads (in q_proj / o_proj columns) and of its K/V head."""
    q = [(group.group * rep + h) * head_dim + j for h in group.queries for j in range(head_dim)]
    kv = [group.group * head_dim + j for j in range(head_dim)]
    return q, kv


def prune_state(cfg: ModelConfig, state: dict[str, torch.Tensor], sel: Selection, use_slnp: bool = False
                ) -> dict[str, torch.Tensor]:
    """The state dict of the pruned model (DuoMind names, new layer numbering)."""
    hid = torch.tensor(sel.hidden)
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    D = cfg.head_dim

    def gain(name: str) -> torch.Tensor:
        return slnp(state[name], sel.hidden) if use_slnp else state[name][hid].clone()

    out = {"embed.weight": state["embed.weight"][:, hid].clone(), "norm.weight": gain("norm.weight")}
    if "lm_head.weight" in state and not cfg.tie_word_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"][:, hid].clone()
    for n, i in enumerate(sel.layers):
        old, new = f"layers.{i}.", f"layers.{n}."
        for norm in ("attn_norm", "mlp_norm", "attn_post_norm", "mlp_post_norm"):
            if f"{old}{norm}.weight" in state:
                out[f"{new}{norm}.weight"] = gain(f"{old}{norm}.weight")
        # attention: the kept groups, each from its source layer (itself, or a removed layer under CLAP)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("q", "k", "v", "o", "qb", "kb", "vb")}
        for group in sel.heads[i]:
            src = f"layers.{group.source}.attn."
            q_rows, kv_rows = _heads_rows(group, rep, D)
            parts["q"].append(state[f"{src}q_proj.weight"][q_rows][:, hid])
            parts["k"].append(state[f"{src}k_proj.weight"][kv_rows][:, hid])
            parts["v"].append(state[f"{src}v_proj.weight"][kv_rows][:, hid])
            parts["o"].append(state[f"{src}o_proj.weight"][hid][:, q_rows])
            if cfg.qkv_bias:
                parts["qb"].append(state[f"{src}q_proj.bias"][q_rows])
                parts["kb"].append(state[f"{src}k_proj.bias"][kv_rows])
                parts["vb"].append(state[f"{src}v_proj.bias"][kv_rows])
        a = f"{new}attn."
        out[f"{a}q_proj.weight"] = torch.cat(parts["q"])
        out[f"{a}k_proj.weight"] = torch.cat(parts["k"])
        out[f"{a}v_proj.weight"] = torch.cat(parts["v"])
        out[f"{a}o_proj.weight"] = torch.cat(parts["o"], dim=1)
        if cfg.qkv_bias:
            for p in "qkv":
                out[f"{a}{p}_proj.bias"] = torch.cat(parts[f"{p}b"])
        if cfg.o_bias:
            out[f"{a}o_proj.bias"] = state[f"{old}attn.o_proj.bias"][hid].clone()
        if cfg.qk_norm:  # shared by all heads of a layer: moved heads use the receiving layer's
            for p in "qk":
                out[f"{a}{p}_norm.weight"] = state[f"{old}attn.{p}_norm.weight"].clone()
        if i in sel.ffn:
            out.update(_mlp(state, f"{old}mlp.", f"{new}mlp.", hid, sel.ffn[i], cfg.mlp_bias))
        if i in sel.experts:
            out.update(_moe(state, f"{old}mlp.", f"{new}mlp.", hid, sel.experts[i], sel.expert_ffn[i]))
        if i in sel.shared_ffn:
            out.update(_mlp(state, f"{old}mlp.shared.", f"{new}mlp.shared.", hid, sel.shared_ffn[i], False))
    return out


def _mlp(state, old: str, new: str, hid: torch.Tensor, keep: list[int], bias: bool) -> dict[str, torch.Tensor]:
    f = torch.tensor(keep)
    out = {f"{new}gate_proj.weight": state[f"{old}gate_proj.weight"][f][:, hid].clone(),
           f"{new}up_proj.weight": state[f"{old}up_proj.weight"][f][:, hid].clone(),
           f"{new}down_proj.weight": state[f"{old}down_proj.weight"][hid][:, f].clone()}
    if bias:
        out[f"{new}gate_proj.bias"] = state[f"{old}gate_proj.bias"][f].clone()
        out[f"{new}up_proj.bias"] = state[f"{old}up_proj.bias"][f].clone()
        out[f"{new}down_proj.bias"] = state[f"{old}down_proj.bias"][hid].clone()
    return out


def _moe(state, old: str, new: str, hid: torch.Tensor, experts: list[int], neurons: list[list[int]]
         ) -> dict[str, torch.Tensor]:
    e = torch.tensor(experts)
    out = {f"{new}router.weight": state[f"{old}router.weight"][e][:, hid].clone()}
    for name in ("expert_scale", "expert_bias"):
        if f"{old}router.{name}" in state:
            out[f"{new}router.{name}"] = state[f"{old}router.{name}"][e].clone()
    gate_up, down = state[f"{old}experts.gate_up_proj"], state[f"{old}experts.down_proj"]
    F_old = gate_up.shape[1] // 2
    gu, dn = [], []
    for x, keep in zip(experts, neurons):
        rows = torch.tensor(keep + [F_old + k for k in keep])  # gate rows, then the matching up rows
        gu.append(gate_up[x][rows][:, hid])
        dn.append(down[x][hid][:, torch.tensor(keep)])
    out[f"{new}experts.gate_up_proj"] = torch.stack(gu)
    out[f"{new}experts.down_proj"] = torch.stack(dn)
    return out


def apply(model, sel: Selection, new: ModelConfig, use_slnp: bool = False):
    """A new DuoMind model of config `new` holding `model`'s weights cut down to `sel`."""
    from duomind.model import DuoMind

    cfg = model.model_config
    final = final_config(cfg, new, sel)
    state = prune_state(cfg, dict(model.state_dict()), sel, use_slnp)
    with torch.device("meta"):
        pruned = DuoMind(final)
    missing, unexpected = pruned.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (final.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"pruned state does not fit the pruned config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}.")
    if final.tie_word_embeddings:
        pruned.tie_weights()
    return pruned.to(next(model.parameters()).dtype).eval()
