"""Post-RMSNorm absorption for sandwich / DSSN models (Pangu Light, arXiv 2505.20155).

A sandwich block adds P(a) = g * a / rms(a) to the residual, where a is the attention or MLP output. Pangu
Light replaces the per-token 1 / rms(a) by one constant c calibrated on data, so P(a) ~= (c g) * a, and folds
c g into the rows of the projection that made a (o_proj, down_proj of the MLP, of every expert and of the
shared experts). The post-norms disappear: the block becomes pre-norm (norm_style "pre"), cheaper at inference.

c is the least-squares fit over calibration tokens t: c = sum_t s_t ||a_t||^2 / sum_t ||a_t||^2 with
s_t = 1 / sqrt(mean(a_t^2) + eps), so it is exact whenever every token has the same RMS.
(CLAP lives in `select` and SLNP in `ops`: they decide and slice; this step changes weights.)
"""

from __future__ import annotations

import torch

from duomind.moe import MoELayer


@torch.no_grad()
def norm_constants(model, batches: torch.Tensor, micro_batch: int = 8) -> dict[str, float]:
    """Calibrated constant c for every post-norm ("layers.{i}.attn_post_norm", ...) of a sandwich model."""
    sums: dict[str, list[float]] = {}
    hooks = []
    for i, layer in enumerate(model.layers):
        for name in ("attn_post_norm", "mlp_post_norm"):
            norm = getattr(layer, name)
            key = f"layers.{i}.{name}"

            def hook(m, args, key=key):
                a = args[0].double()
                energy = a.pow(2).sum(-1)
                s = torch.rsqrt(a.pow(2).mean(-1) + m.eps)
                acc = sums.setdefault(key, [0.0, 0.0])
                acc[0] += float((s * energy).sum())
                acc[1] += float(energy.sum())
            hooks.append(norm.register_forward_pre_hook(hook))
    try:
        model.eval()
        for s in range(0, len(batches), micro_batch):
            model(batches[s:s + micro_batch].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {k: (num / den if den > 0 else 1.0) for k, (num, den) in sums.items()}


def _scale_rows(linear, scale: torch.Tensor) -> None:
    linear.weight.mul_(scale[:, None].to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.mul_(scale.to(linear.bias.dtype))


@torch.no_grad()
def absorb_post_norms(model, batches: torch.Tensor | None = None, constants: dict[str, float] | None = None):
    """Fold every post-norm of a sandwich / DSSN `model` into its output projection; return a pre-norm model.

    Steps: (1) calibrate c per post-norm on `batches` (or take `constants`); (2) scale the output rows of
    o_proj and of the MLP's down projections (dense, every routed expert, shared experts) by c * gain; (3) build
    the same model with norm_style "pre" and load the folded weights (the post-norm gains are dropped).
    """
    from duomind.model import DuoMind

    cfg = model.model_config
    if cfg.norm_style == "pre":
        raise ValueError("post-norm absorption needs a sandwich or dssn model; this one is pre-norm (nothing to "
                         "absorb). Turn --absorb off.")
    if constants is None:
        if batches is None:
            raise ValueError("absorb_post_norms needs calibration batches or precomputed constants.")
        constants = norm_constants(model, batches)
    for i, layer in enumerate(model.layers):
        c_attn = constants[f"layers.{i}.attn_post_norm"] * layer.attn_post_norm.weight.float()
        _scale_rows(layer.attn.o_proj, c_attn)
        c_mlp = constants[f"layers.{i}.mlp_post_norm"] * layer.mlp_post_norm.weight.float()
        if isinstance(layer.mlp, MoELayer):
            layer.mlp.experts.down_proj.mul_(c_mlp[None, :, None].to(layer.mlp.experts.down_proj.dtype))
            if layer.mlp.shared is not None:
                _scale_rows(layer.mlp.shared.down_proj, c_mlp)
        else:
            _scale_rows(layer.mlp.down_proj, c_mlp)
    fields = cfg.to_dict() | {"norm_style": "pre"}
    state = {k: v for k, v in model.state_dict().items() if "post_norm" not in k}
    from duomind.config import ModelConfig

    with torch.device("meta"):
        out = DuoMind(ModelConfig(**fields))
    out.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        out.tie_weights()
    return out.eval()
