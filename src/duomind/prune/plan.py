"""Pruning targets: the shape a pruned model will have, from explicit sizes or a parameter budget.

Only shapes are decided here (no weights are read), so `duomind prune plan` prints the plan before any work.
Which channels, heads, neurons, experts and layers fill that shape is decided from activations (`select`).
"""

from __future__ import annotations

from dataclasses import dataclass

from duomind.config import ModelConfig


@dataclass
class Targets:
    """What to prune to. Unset sizes keep the model's own, or are solved from `target_params`.

    Attributes:
        hidden: Residual width d'.
        ffn: Dense MLP width (intermediate_size).
        heads: Query heads (a multiple of kv_heads).
        kv_heads: Key/value heads (GQA groups kept).
        layers: Decoder blocks kept.
        experts: Routed experts kept per MoE layer (MoGE: a multiple of expert_groups).
        expert_ffn: Width of each routed and shared expert.
        target_params: Parameter budget: a fraction of the model's parameters (<= 1, e.g. 0.5) or an absolute
            count (> 1). The sizes not given explicitly shrink by one common width ratio w and, unless
            `depth_only`, the layers by the same ratio (joint width + depth pruning).
        depth_only: Meet the budget by removing layers only (ShortGPT).
    """

    hidden: int | None = None
    ffn: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    layers: int | None = None
    experts: int | None = None
    expert_ffn: int | None = None
    target_params: float | None = None
    depth_only: bool = False


def param_parts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts per part (embeddings, attention, mlp, norms, total), from the config alone."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    attn += (h * hd + 2 * kv * hd) * cfg.qkv_bias + d * cfg.o_bias + 2 * hd * cfg.qk_norm
    dense = 3 * d * cfg.intermediate_size + (2 * cfg.intermediate_size + d) * cfg.mlp_bias
    mlp = sum(cfg._mlp_parameters(i, active=False) if cfg.is_moe_layer(i) else dense
              for i in range(cfg.num_hidden_layers))
    parts = {"embeddings": cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2),
             "attention": cfg.num_hidden_layers * attn, "mlp": mlp,
             "norms": cfg.num_hidden_layers * d * (2 if cfg.norm_style == "pre" else 4) + d}
    parts["total"] = sum(parts.values())
    return parts


def _check_size(name: str, value: int | None, have: int, field: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"--{name} must be a positive integer, got {value!r}.")
    if value > have:
        raise ValueError(f"--{name} {value} is larger than the model's {field}={have}; pruning only shrinks a "
                         f"model, so ask for at most {have}.")


def head_split(cfg: ModelConfig, heads: int | None, kv_heads: int | None) -> tuple[int, int]:
    """(query heads, KV heads) that keep GQA grouping: every kept KV group keeps heads / kv_heads query heads.

    A group can only keep query heads it already has, so heads / kv_heads may not exceed the model's group size.
    """
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    rep = h // kv
    _check_size("heads", heads, h, "num_attention_heads")
    _check_size("kv_heads", kv_heads, kv, "num_key_value_heads")
    if heads is None and kv_heads is None:
        return h, kv
    if kv_heads is None:
        fits = [g for g in range(min(kv, heads), 0, -1) if heads % g == 0 and heads // g <= rep]
        if not fits:
            raise ValueError(f"--heads {heads} cannot be split into at most {kv} KV groups of at most {rep} query "
                             f"heads (the model's grouping); choose heads = g x r with g <= {kv}, r <= {rep}.")
        return heads, fits[0]
    if heads is None:
        heads = kv_heads * rep
    if heads % kv_heads:
        raise ValueError(f"--heads {heads} is not a multiple of --kv_heads {kv_heads}: grouped-query attention "
                         f"shares each KV head across the same number of query heads; choose heads = "
                         f"{kv_heads} x r (r <= {rep}).")
    if heads // kv_heads > rep:
        raise ValueError(f"--heads {heads} over --kv_heads {kv_heads} puts {heads // kv_heads} query heads in each "
                         f"KV group, but the model's groups hold only {rep}; a group cannot gain heads. Use at "
                         f"most {kv_heads * rep} heads or more KV heads.")
    return heads, kv_heads


def shaped(cfg: ModelConfig, hidden: int, ffn: int, heads: int, kv_heads: int, layers: int,
           experts: int, expert_ffn: int) -> ModelConfig:
    """The config of `cfg` cut to these sizes (head_dim kept; window layer ids are fixed once layers are chosen)."""
    fields = cfg.to_dict()
    fields.update(hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  num_hidden_layers=layers, head_dim=cfg.head_dim)
    if cfg.window_layers is not None:
        fields["window_layers"] = [i for i in cfg.window_layers if i < layers]
    if cfg.mlp_type != "dense":
        m = cfg.expert_groups
        if experts % m:
            raise ValueError(f"--experts {experts} is not a multiple of expert_groups={m}: every group (device) "
                             f"must keep the same number of experts; choose a multiple of {m}.")
        k = cfg.num_experts_per_tok
        k = m * min(k // m, experts // m) if cfg.mlp_type == "moge" else min(k, experts)
        fields.update(num_experts=experts, num_experts_per_tok=k, moe_intermediate_size=expert_ffn,
                      first_dense_layers=min(cfg.first_dense_layers, layers))
    return ModelConfig(**fields)


def _round(x: float, orig: int) -> int:
    """Round a shrunk size to a multiple of 8 (fast kernels) where the original size allows it."""
    m = 8 if orig % 8 == 0 and orig >= 32 else 1
    return max(m, min(orig, m * round(x / m)))


def _heads_near(cfg: ModelConfig, want: float) -> tuple[int, int]:
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    options = [(g * r, g) for g in range(1, kv + 1) for r in range(1, h // kv + 1)]
    best = min(options, key=lambda o: (abs(o[0] - want), -o[1], o[0]))
    return best


def budget_of(cfg: ModelConfig, target: float) -> int:
    """The parameter budget `target` stands for (a fraction <= 1 or a count), checked against the model."""
    total = cfg.num_parameters()
    if target <= 0:
        raise ValueError(f"--target_params must be positive, got {target}.")
    budget = int(target * total) if target <= 1 else int(target)
    if budget >= total:
        raise ValueError(f"--target_params {target} asks for {budget:,} parameters but the model has only "
                         f"{total:,}; give a fraction below 1 (e.g. 0.5) or a smaller count.")
    return budget


def solve(cfg: ModelConfig, t: Targets) -> ModelConfig:
    """The pruned config for targets `t` (see `Targets`); clear errors for sizes the model cannot take."""
    _check_size("hidden", t.hidden, cfg.hidden_size, "hidden_size")
    _check_size("ffn", t.ffn, cfg.intermediate_size, "intermediate_size")
    _check_size("layers", t.layers, cfg.num_hidden_layers, "num_hidden_layers")
    moe = cfg.mlp_type != "dense"
    if not moe and (t.experts or t.expert_ffn):
        raise ValueError("--experts / --expert_ffn apply to MoE models only; this model is dense.")
    if moe:
        _check_size("experts", t.experts, cfg.num_experts, "num_experts")
        _check_size("expert_ffn", t.expert_ffn, cfg.moe_intermediate_size, "moe_intermediate_size")
    heads, kv = head_split(cfg, t.heads, t.kv_heads)

    def at(w: float, depth: bool) -> ModelConfig:
        hs, kvs = (heads, kv) if t.heads or t.kv_heads else _heads_near(cfg, cfg.num_attention_heads * w)
        return shaped(cfg, t.hidden or _round(cfg.hidden_size * w, cfg.hidden_size),
                      t.ffn or _round(cfg.intermediate_size * w, cfg.intermediate_size), hs, kvs,
                      t.layers or (max(1, round(cfg.num_hidden_layers * w)) if depth else cfg.num_hidden_layers),
                      t.experts or cfg.num_experts,
                      t.expert_ffn or _round(cfg.moe_intermediate_size * w, cfg.moe_intermediate_size))

    if t.target_params is None:
        return shaped(cfg, t.hidden or cfg.hidden_size, t.ffn or cfg.intermediate_size, heads, kv,
                      t.layers or cfg.num_hidden_layers, t.experts or cfg.num_experts,
                      t.expert_ffn or cfg.moe_intermediate_size)
    budget = budget_of(cfg, t.target_params)
    if t.depth_only:
        for n in range(cfg.num_hidden_layers, 0, -1):
            out = shaped(cfg, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                         cfg.num_key_value_heads, n, cfg.num_experts, cfg.moe_intermediate_size)
            if out.num_parameters() <= budget:
                return out
        raise ValueError(f"even one layer exceeds the budget of {budget:,} parameters (embeddings alone are "
                         f"{param_parts(cfg)['embeddings']:,}); depth-only pruning cannot reach it, prune width too.")
    for step in range(400, 0, -1):
        out = at(step / 400, depth=True)
        if out.num_parameters() <= budget:
            return out
    raise ValueError(f"no shape reaches the budget of {budget:,} parameters with the sizes fixed by flags; "
                     "drop some explicit sizes or raise --target_params.")


def format_plan(cfg: ModelConfig, new: ModelConfig, method: str = "") -> str:
    """A table of sizes and parameter counts per part, before and after."""
    rows = [("hidden_size", cfg.hidden_size, new.hidden_size),
            ("intermediate_size", cfg.intermediate_size, new.intermediate_size),
            ("num_attention_heads", cfg.num_attention_heads, new.num_attention_heads),
            ("num_key_value_heads", cfg.num_key_value_heads, new.num_key_value_heads),
            ("num_hidden_layers", cfg.num_hidden_layers, new.num_hidden_layers),
            ("head_dim", cfg.head_dim, new.head_dim)]
    if cfg.mlp_type != "dense":
        rows += [("num_experts", cfg.num_experts, new.num_experts),
                 ("num_experts_per_tok", cfg.num_experts_per_tok, new.num_experts_per_tok),
                 ("moe_intermediate_size", cfg.moe_intermediate_size, new.moe_intermediate_size)]
    if cfg.norm_style != new.norm_style:
        rows.append(("norm_style", cfg.norm_style, new.norm_style))
    old_p, new_p = param_parts(cfg), param_parts(new)
    lines = [f"pruning plan{f' ({method})' if method else ''}", f"{'size':24s}{'before':>14s}{'after':>14s}"]
    lines += [f"{name:24s}{a!s:>14s}{b!s:>14s}" for name, a, b in rows]
    lines.append(f"{'parameters':24s}{'before':>14s}{'after':>14s}{'kept':>8s}")
    for part in old_p:
        kept = new_p[part] / old_p[part] if old_p[part] else 1.0
        lines.append(f"{part:24s}{old_p[part]:>14,}{new_p[part]:>14,}{kept:>8.1%}")
    return "\n".join(lines)
