"""Pruning invariants: keep-all is the identity, shapes agree, CLAP moves heads unchanged, SLNP keeps gain
norms, post-norm absorption is exact where its constant is, importance finds dead units, plans meet budgets."""

from __future__ import annotations

import pytest
import torch

from duomind.config import ModelConfig
from duomind.model import DuoMind
from duomind.prune.importance import Importance, measure
from duomind.prune.ops import apply
from duomind.prune.pipeline import METHODS, plan, prune_model
from duomind.prune.plan import Targets, format_plan, param_parts, solve
from duomind.prune.reinit import absorb_post_norms, norm_constants
from duomind.prune.select import HeadGroup, Selection, choose, keep_all

VARIANTS = {
    "pre": dict(),
    "dssn-bias-qknorm": dict(norm_style="dssn", qkv_bias=True, o_bias=True, qk_norm=True, mlp_bias=True),
    "sandwich-tied-window": dict(norm_style="sandwich", tie_word_embeddings=True, attention_window=4,
                                 window_layers=[1, 2]),
    "moge-shared": dict(mlp_type="moge", num_experts=8, num_experts_per_tok=4, expert_groups=4,
                        moe_intermediate_size=32, num_shared_experts=1, first_dense_layers=1, router_scale=True),
}


def model_of(seed: int = 0, **fields) -> DuoMind:
    """A tiny random model with randomised norm gains and biases (constants would hide slicing mistakes)."""
    cfg = ModelConfig(**{**dict(vocab_size=61, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=48, head_dim=8), **fields})
    torch.manual_seed(seed)
    model = DuoMind(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or "expert_scale" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def ids(n: int = 3, t: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keep_all_returns_the_original_model(variant):
    model = model_of(**VARIANTS[variant])
    cfg = model.model_config
    same = apply(model, keep_all(cfg), cfg)
    assert same.model_config == cfg
    x = ids()
    with torch.no_grad():
        assert torch.equal(same(x).logits, model(x).logits)
    ref = model.state_dict()
    assert all(torch.equal(t, ref[k]) for k, t in same.state_dict().items())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pruned_shapes_agree_everywhere_and_reload(variant, tmp_path):
    model = model_of(**VARIANTS[variant])
    cfg = model.model_config
    new = solve(cfg, Targets(hidden=24, ffn=32, heads=2, kv_heads=1, layers=3,
                             **({"experts": 4, "expert_ffn": 16} if cfg.mlp_type != "dense" else {})))
    pruned, _ = prune_model(model, "minitron", new, ids(4, 16))
    fresh = DuoMind(pruned.model_config)
    got, want = pruned.state_dict(), fresh.state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert sum(p.numel() for p in pruned.parameters()) == pruned.model_config.num_parameters()
    assert pruned.model_config.num_parameters() == param_parts(pruned.model_config)["total"]
    pruned.save_pretrained(tmp_path)
    back = DuoMind.from_pretrained(tmp_path).eval()
    x = ids()
    with torch.no_grad():
        assert torch.equal(back(x).logits, pruned(x).logits)


def fake_importance(cfg: ModelConfig, layer_scores: list[float], head_scores: torch.Tensor) -> Importance:
    return Importance(hidden=torch.arange(cfg.hidden_size, dtype=torch.float64), heads=head_scores,
                      ffn={i: torch.arange(cfg.intermediate_size, dtype=torch.float64)
                           for i in range(cfg.num_hidden_layers)},
                      block_influence=torch.tensor(layer_scores, dtype=torch.float64),
                      loss_delta=torch.tensor(layer_scores, dtype=torch.float64))


def test_clap_moves_the_removed_layers_best_heads_unchanged():
    model = model_of()
    cfg = model.model_config
    heads = torch.ones(4, 4, dtype=torch.float64)
    heads[2] = torch.tensor([0.2, 0.3, 8.0, 7.0])  # layer 2 (removed): group 1 (heads 2, 3) beats layer 1's
    heads[1] = torch.tensor([5.0, 4.0, 0.5, 0.1])  # layer 1 keeps its group 0 (heads 0, 1), drops group 1
    new = solve(cfg, Targets(layers=3))
    sel = choose(cfg, new, fake_importance(cfg, [3.0, 2.0, 0.1, 1.0], heads), clap=True)
    assert sel.layers == [0, 1, 3]
    assert [(g.source, g.group, g.queries) for g in sel.heads[1]] == [(1, 0, [0, 1]), (2, 1, [0, 1])]
    pruned = apply(model, sel, new)
    D, old, got = cfg.head_dim, model.state_dict(), pruned.state_dict()
    moved_q, moved_kv = slice(2 * D, 4 * D), slice(D, 2 * D)  # group 1 of layer 2: q heads 2-3, kv 1
    assert torch.equal(got["layers.1.attn.q_proj.weight"][2 * D:], old["layers.2.attn.q_proj.weight"][moved_q])
    assert torch.equal(got["layers.1.attn.k_proj.weight"][D:], old["layers.2.attn.k_proj.weight"][moved_kv])
    assert torch.equal(got["layers.1.attn.v_proj.weight"][D:], old["layers.2.attn.v_proj.weight"][moved_kv])
    assert torch.equal(got["layers.1.attn.o_proj.weight"][:, 2 * D:], old["layers.2.attn.o_proj.weight"][:, moved_q])
    assert torch.equal(got["layers.1.attn.q_proj.weight"][:2 * D], old["layers.1.attn.q_proj.weight"][:2 * D])
    # without CLAP the layer keeps its own two groups
    plain = choose(cfg, new, fake_importance(cfg, [3.0, 2.0, 0.1, 1.0], heads), clap=False)
    assert [(g.source, g.group) for g in plain.heads[1]] == [(1, 0), (1, 1)]


def test_slnp_keeps_every_gain_norm():
    model = model_of(norm_style="sandwich")
    cfg = model.model_config
    new = solve(cfg, Targets(hidden=20))
    sel = choose(cfg, new, fake_importance(cfg, [1, 1, 1, 1], torch.ones(4, 4, dtype=torch.float64)))
    with_slnp, plain = apply(model, sel, new, use_slnp=True), apply(model, sel, new)
    old, got, raw = model.state_dict(), with_slnp.state_dict(), plain.state_dict()
    gains = [k for k in old if k.endswith("norm.weight") and old[k].shape == (cfg.hidden_size,)]
    assert len(gains) == 1 + 4 * 4
    for k in gains:
        assert torch.allclose(got[k].norm(), old[k].norm(), rtol=1e-5)
        assert torch.allclose(got[k] / got[k].norm(), raw[k] / raw[k].norm(), atol=1e-6)  # same direction
        assert not torch.allclose(raw[k].norm(), old[k].norm(), rtol=1e-3)  # plain slicing shrinks it


@pytest.mark.parametrize("fields", [dict(norm_style="dssn"), dict(norm_style="sandwich", o_bias=True, mlp_bias=True),
                                    VARIANTS["moge-shared"] | dict(norm_style="dssn")])
def test_absorption_exact_at_the_true_rms_and_close_otherwise(fields):
    model = model_of(**fields)
    one = ids(1, 1)
    with torch.no_grad():
        absorbed = absorb_post_norms(model_of(**fields), one)  # calibrated on exactly the token it is run on
        assert absorbed.model_config.norm_style == "pre"
        assert not any("post_norm" in k for k in absorbed.state_dict())
        assert torch.allclose(absorbed(one).logits, model(one).logits, atol=1e-5)
        x, ref = ids(4, 24, seed=5), model(ids(4, 24, seed=5)).logits
        calibrated = absorb_post_norms(model_of(**fields), ids(8, 24, seed=2))
        ones = {k: 1.0 for k in norm_constants(model, one)}
        dropped = absorb_post_norms(model_of(**fields), constants=ones)  # the norm removed without calibration
        err = (calibrated(x).logits - ref).abs().mean()
        assert err < 0.5 * ref.abs().mean()
        assert err < 0.5 * (dropped(x).logits - ref).abs().mean()


def test_importance_scores_dead_units_zero():
    model = model_of()
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight[5].zero_()  # neuron 5 of layer 1 never fires
        model.layers[2].attn.v_proj.weight[8:16].zero_()  # KV group 1 of layer 2: its query heads output 0
        model.layers[3].attn.o_proj.weight.zero_()
        model.layers[3].mlp.down_proj.weight.zero_()  # layer 3 is the identity
    imp = measure(model, ids(4, 16))
    assert imp.ffn[1][5] == 0 and imp.ffn[1].min() == 0 and (imp.ffn[1] > 0).sum() == 47
    assert imp.heads[2, 2:].abs().max() == 0 and imp.heads[2, :2].min() > 0
    assert abs(float(imp.block_influence[3])) < 1e-6 and abs(float(imp.loss_delta[3])) < 1e-6
    assert int(imp.layers("bi").argmin()) == 3
    sel = choose(model.model_config, solve(model.model_config, Targets(layers=3, ffn=40)), imp, layer_metric="bi")
    assert 3 not in sel.layers and 5 not in sel.ffn[1]


def test_plan_meets_the_budget_and_prints_parts():
    cfg = ModelConfig.from_preset("base-20m", vocab_size=899)
    for method in METHODS:
        new = plan(cfg, method, Targets(target_params=0.5))
        frac = new.num_parameters() / cfg.num_parameters()
        assert 0.4 < frac <= 0.5, (method, frac)
        assert new.num_attention_heads % new.num_key_value_heads == 0
    assert plan(cfg, "shortgpt", Targets(target_params=0.5)).hidden_size == cfg.hidden_size
    text = format_plan(cfg, plan(cfg, "pangu-light", Targets(target_params=0.5)))
    assert f"{cfg.num_parameters():,}" in text and "attention" in text and "num_hidden_layers" in text
    assert sum(param_parts(cfg)[k] for k in ("embeddings", "attention", "mlp", "norms")) == cfg.num_parameters()


@pytest.mark.parametrize("targets, message", [
    (Targets(hidden=128), "larger than the model's hidden_size=32"),
    (Targets(layers=5), "larger than the model's num_hidden_layers=4"),
    (Targets(heads=3, kv_heads=2), "not a multiple of --kv_heads"),
    (Targets(heads=4, kv_heads=1), "groups hold only 2"),
    (Targets(heads=3), "cannot be split"),
    (Targets(target_params=1.5e6), "the model has only"),
    (Targets(target_params=0.0), "must be positive"),
    (Targets(ffn=0), "positive integer"),
    (Targets(), "no target given"),
    (Targets(experts=2), "MoE models only"),
])
def test_bad_targets_are_refused_with_clear_errors(targets, message):
    with pytest.raises(ValueError, match=message):
        plan(model_of().model_config, "minitron", targets)


def test_method_names_and_shortgpt_width_are_checked():
    cfg = model_of().model_config
    with pytest.raises(ValueError, match="unknown pruning method"):
        plan(cfg, "magnitude", Targets(layers=2))
    with pytest.raises(ValueError, match="prunes layers only"):
        plan(cfg, "shortgpt", Targets(hidden=16))


def test_moge_keeps_the_same_number_of_experts_per_group():
    model = model_of(**VARIANTS["moge-shared"])
    cfg = model.model_config
    with pytest.raises(ValueError, match="multiple of expert_groups=4"):
        solve(cfg, Targets(experts=6))
    new = solve(cfg, Targets(experts=4))
    assert new.num_experts_per_tok == 4 and new.first_dense_layers == 1
    imp = measure(model, ids(4, 16), loss_delta=False)
    sel = choose(cfg, new, imp, layer_metric="bi")
    for kept in sel.experts.values():
        assert sorted(e // 2 for e in kept) == [0, 1, 2, 3]  # one expert from each group of two
    assert isinstance(sel, Selection) and all(isinstance(g, HeadGroup) for g in sel.heads[0])
