"""The decoder family: invariants of every variant, HF integration, and config errors."""

from __future__ import annotations

import math

import pytest
import torch

from duomind.config import ConfigError, ModelConfig, from_dict
from duomind.model import DuoMind, KVCache

VARIANTS = {
    "pre": {},
    "sandwich": {"norm_style": "sandwich"},
    "dssn_tiny": {"norm_style": "dssn", "init": "tiny"},
    "qwen2_like": {"qkv_bias": True},
    "qwen3_like": {"qk_norm": True, "num_key_value_heads": 1},
    "gemma_like": {"norm_style": "sandwich", "hidden_act": "gelu_tanh", "scale_embeddings": True,
                   "attn_softcap": 20.0, "final_softcap": 10.0, "attention_window": 4, "window_layers": [0],
                   "tie_word_embeddings": True},
    "mistral_like": {"attention_window": 5},
    "llama3_rope": {"rope_scale": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
    "moe": {"mlp_type": "moe", "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True},
    "moge": {"mlp_type": "moge", "num_experts": 8, "num_experts_per_tok": 4, "expert_groups": 4,
             "router_scale": True, "num_shared_experts": 1, "moe_intermediate_size": 32, "first_dense_layers": 1},
}


def tiny(**kw) -> DuoMind:
    torch.manual_seed(0)
    return DuoMind(ModelConfig(vocab_size=128, **kw)).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_decode_equals_full_forward(name):
    model = tiny(**VARIANTS[name])
    x = torch.randint(0, 128, (2, 11))
    full = model(x).logits
    cache = KVCache(model.config, 2, 16)
    parts = [model(x[:, :6], cache=cache).logits]
    parts += [model(x[:, t:t + 1], cache=cache).logits for t in range(6, 11)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("name", ["pre", "gemma_like", "mistral_like"])
def test_left_padding_matches_unpadded(name):
    model = tiny(**VARIANTS[name])
    x = torch.randint(1, 128, (1, 7))
    ref = model(x).logits
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], 1)
    out = model(padded, attention_mask=mask).logits[:, 3:]
    assert torch.allclose(out, ref, atol=1e-5)


def test_cache_truncate_rolls_back():
    model = tiny()
    x = torch.randint(0, 128, (1, 9))
    cache = KVCache(model.config, 1, 16)
    model(x[:, :5], cache=cache)
    model(torch.randint(0, 128, (1, 3)), cache=cache)  # drafts that get rejected
    cache.truncate(5)
    rolled = model(x[:, 5:], cache=cache).logits
    assert torch.allclose(rolled, model(x).logits[:, 5:], atol=1e-5)
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(99)


def test_cache_overflow_is_a_clear_error():
    model = tiny()
    cache = KVCache(model.config, 1, 4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_dssn_and_tinyinit_follow_the_paper():
    cfg = dict(num_hidden_layers=16, hidden_size=64, norm_style="dssn", init="tiny")
    model = tiny(**cfg)
    block = model.layers[3]
    assert torch.allclose(block.attn_post_norm.weight, torch.full((64,), 0.283 / math.sqrt(16)))
    assert torch.allclose(block.mlp_post_norm.weight, torch.full((64,), 0.432 / math.sqrt(16)))
    std = math.sqrt(1 / (2 * 64 * 16))
    assert abs(block.mlp.up_proj.weight.std().item() - std) / std < 0.05
    assert abs(model.embed.weight.std().item() - 0.5) < 0.02
    sandwich = tiny(num_hidden_layers=16, norm_style="sandwich")
    assert torch.equal(sandwich.layers[3].attn_post_norm.weight, torch.ones(64))
    assert not hasattr(tiny().layers[0], "attn_post_norm")


def test_parameter_count_matches_config():
    for kw in VARIANTS.values():
        model = tiny(**kw)
        counted = sum(p.numel() for p in model.parameters())
        assert counted == model.model_config.num_parameters(), kw


def test_from_pretrained_and_hf_generate(tmp_path):
    from transformers import AutoModelForCausalLM

    import duomind  # noqa: F401  (registers the Auto classes)

    model = tiny(norm_style="dssn", qk_norm=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is DuoMind
    x = torch.randint(0, 128, (2, 6))
    assert torch.equal(loaded(x).logits, model(x).logits)
    out = loaded.generate(x, max_new_tokens=5, do_sample=False)
    # HF's loop with its DynamicCache must agree with uncached greedy decoding
    seq = x.clone()
    for _ in range(5):
        seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


def test_peft_lora_wraps_the_model():
    peft = pytest.importorskip("peft")
    model = tiny()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters())
    assert lora(torch.randint(0, 128, (1, 4))).logits.shape == (1, 4, 128)


def test_loss_is_next_token_cross_entropy():
    model = tiny()
    x = torch.randint(0, 128, (2, 8))
    out = model(x, labels=x)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref)


@pytest.mark.parametrize("kw, msg", [
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, "must divide num_attention_heads"),
    ({"norm_style": "post"}, "norm_style='post' is not one of"),
    ({"hidden_size": 65}, "not divisible by num_attention_heads"),
    ({"init": "xavier"}, "init='xavier'"),
    ({"window_layers": [5], "attention_window": 4}, "outside"),
    ({"mlp_type": "moe", "num_experts": 6, "expert_groups": 4}, r"num_experts=6 is not divisible by expert_groups=4"),
    ({"mlp_type": "moge", "num_experts": 8, "expert_groups": 4, "num_experts_per_tok": 6},
     r"num_experts_per_tok=6 must be a multiple of expert_groups=4"),
    ({"mlp_type": "moge", "num_experts": 8, "expert_groups": 4, "num_experts_per_tok": 12},
     r"K'=3 experts per group .* each group holds only 2"),
    ({"mlp_type": "moe", "num_experts": 8, "num_experts_per_tok": 10}, r"exceeds num_experts=8"),
    ({"mlp_type": "moge", "num_experts": 8, "expert_groups": 4, "num_experts_per_tok": 4, "norm_topk_prob": True},
     "does not renormalise"),
    ({"mlp_type": "mixture"}, "mlp_type='mixture' is not one of"),
])
def test_bad_model_config_names_the_field(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        ModelConfig(**kw)


def test_unknown_field_suggests_the_right_name():
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        ModelConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ConfigError, match="known presets"):
        ModelConfig.from_preset("gigantic")


def test_wrongly_typed_scalar_fields_are_refused():
    from duomind.rl.config import RLConfig

    with pytest.raises(ConfigError, match="'tie_word_embeddings' must be bool, got str 'false'; write true/false"):
        ModelConfig.from_dict({"tie_word_embeddings": "false"})  # a quoted YAML boolean would read as true
    with pytest.raises(ConfigError, match="'hidden_size' must be int, got bool"):
        ModelConfig.from_dict({"hidden_size": True})
    with pytest.raises(ConfigError, match="'scale_std' must be bool"):
        from_dict(RLConfig, {"policy": "p", "prompts": "q", "scale_std": "no"}, "rl")
    assert ModelConfig.from_dict({"rms_norm_eps": 1}).rms_norm_eps == 1  # an int is a fine float


def test_config_json_with_unknown_field_is_refused(tmp_path):
    import json

    from duomind.model import DuoMindConfig

    tiny().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["num_layerz"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="num_layerz"):
        DuoMindConfig.from_pretrained(tmp_path)
