"""Converters: parity with tiny random HF models per architecture, round trips, and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

import duomind  # noqa: F401  (as users do; importing duomind.convert registers the model type)
import duomind.convert as cv
from duomind.cli import main as cli_main
from duomind.config import ModelConfig
from duomind.convert import CONVERTERS, ConversionError, convert
from duomind.model import DuoMind

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, initializer_range=0.1)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# Windows of 4 over 12-token sequences, so sliding attention changes the result.
CASES = {
    "llama": lambda: LlamaConfig(**TINY),
    "llama-rope-bias": lambda: LlamaConfig(**TINY, attention_bias=True, rope_parameters=LLAMA3_ROPE),
    "mistral": lambda: MistralConfig(**TINY, sliding_window=4),
    "qwen2": lambda: Qwen2Config(**TINY, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": lambda: Qwen3Config(**TINY, head_dim=32, attention_bias=True, tie_word_embeddings=True),
    "gemma2": lambda: Gemma2Config(**TINY, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                                   attn_logit_softcapping=3.0, final_logit_softcapping=2.0),
    "mixtral": lambda: MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2, sliding_window=4),
    # layer 0 dense (mlp_only_layers), renormalised top-2 of 4 experts 32 wide
    "qwen3_moe": lambda: Qwen3MoeConfig(**TINY, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                        moe_intermediate_size=32, mlp_only_layers=[0], norm_topk_prob=True),
}


def tiny_hf(hf_config, seed: int = 0):
    """A tiny random HF model; norms and biases are randomised too, since HF initialises them to constants."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.5 * torch.randn_like(p))  # Gemma: w ~ N(0, .5), so the (1 + w) fold matters
    return model


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    return ids, mask


def logits(model, ids, mask=None):
    # Positions from the mask, as generate does; HF models otherwise count the padding.
    pos = None if mask is None else (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=pos).logits


def max_diff(a, b, mask=None):
    return ((a - b)[mask.bool()] if mask is not None else a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """One architecture: HF model saved, converted to DuoMind, and converted back."""
    root = tmp_path_factory.mktemp(request.param)
    hf = tiny_hf(CASES[request.param]())
    hf.save_pretrained(root / "hf")
    convert(root / "hf", root / "duomind")
    ours = AutoModelForCausalLM.from_pretrained(root / "duomind").eval()
    convert(root / "duomind", root / "hf_back")
    back = AutoModelForCausalLM.from_pretrained(root / "hf_back", attn_implementation="eager").eval()
    return request.param, hf, ours, back, root


def test_logits_match_hf(case):
    _, hf, ours, _, root = case
    assert isinstance(ours, DuoMind)
    ids, mask = batch()
    plain = max_diff(logits(hf, ids), logits(ours, ids))
    padded = max_diff(logits(hf, ids, mask), logits(ours, ids, mask), mask)
    assert plain < 1e-4 and padded < 1e-4, (plain, padded)
    assert logits(hf, ids).abs().max() > 0.5  # logits large enough that atol 1e-4 is a real test
    if ours.model_config.attention_window is not None:  # the window must matter for this input
        full = AutoModelForCausalLM.from_pretrained(root / "duomind", attention_window=None).eval()
        assert max_diff(logits(hf, ids), logits(full, ids)) > 1e-3


def test_round_trip_back_to_hf(case):
    _, hf, _, back, root = case
    assert type(back) is type(hf)
    ids, mask = batch()
    assert max_diff(logits(hf, ids), logits(back, ids)) < 1e-6
    assert max_diff(logits(hf, ids, mask), logits(back, ids, mask), mask) < 1e-6
    original = json.loads((root / "hf" / "config.json").read_text())
    exported = json.loads((root / "hf_back" / "config.json").read_text())
    differing = {k for k in original.keys() & exported.keys() if original[k] != exported[k]}
    assert differing <= {"max_window_layers", "transformers_version"}, differing  # max_window_layers: unused


def test_greedy_generate_matches_hf(case):
    _, hf, ours, _, _ = case
    ids, mask = batch(seed=2)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=True,
                  output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        expected = hf.generate(ids, **kwargs)
        got = ours.generate(ids, **kwargs)
    assert torch.equal(expected.sequences, got.sequences)
    # Tiny random models often repeat one token, so also compare every cached decode step's logits.
    assert max_diff(torch.stack(expected.logits), torch.stack(got.logits)) < 1e-4


def test_state_round_trip_is_identity(case):
    name, _, _, _, root = case
    config = json.loads((root / "hf" / "config.json").read_text())
    hf_state = load_file(root / "hf" / "model.safetensors")
    cfg, state = cv.hf_to_duomind_state(config["model_type"], hf_state, config)
    _, hf_state2 = cv.duomind_to_hf_state(config["model_type"], cfg, state)
    assert hf_state2.keys() == hf_state.keys()
    for key, tensor in hf_state.items():  # Gemma's (1 + w) fold may round the last bit
        torch.testing.assert_close(hf_state2[key], tensor, atol=1e-6 if name == "gemma2" else 0, rtol=0)


def test_gemma2_norms_are_folded(tmp_path):
    hf = tiny_hf(CASES["gemma2"]())
    hf.save_pretrained(tmp_path / "hf")
    model = cv.load_hf_model_as_duomind(tmp_path / "hf")
    theirs = hf.model.layers[0].post_attention_layernorm.weight
    torch.testing.assert_close(model.layers[0].attn_post_norm.weight, 1 + theirs)
    ids, _ = batch()
    assert max_diff(logits(hf, ids), logits(model, ids)) < 1e-4


def test_config_mapping_gemma2_and_qwen2():
    cfg = CONVERTERS["gemma2"].config_to_duomind(CASES["gemma2"]().to_dict())
    assert (cfg.norm_style, cfg.hidden_act, cfg.scale_embeddings, cfg.tie_word_embeddings) == (
        "sandwich", "gelu_tanh", True, True)
    assert cfg.attn_scale == 24**-0.5 and (cfg.attn_softcap, cfg.final_softcap) == (3.0, 2.0)
    assert (cfg.attention_window, cfg.window_layers) == (4, [0])
    qwen = CONVERTERS["qwen2"].config_to_duomind(Qwen2Config(**TINY, use_sliding_window=False).to_dict())
    assert (qwen.qkv_bias, qwen.o_bias, qwen.attention_window) == (True, False, None)
    # Without layer_types (older files), layers from max_window_layers on slide.
    old = {**Qwen2Config(**TINY).to_dict(), "use_sliding_window": True, "sliding_window": 8,
           "max_window_layers": 1}
    old.pop("layer_types")
    assert CONVERTERS["qwen2"].config_to_duomind(old).window_layers == [1]


def test_legacy_rope_fields_and_unsupported_rope():
    base = {k: v for k, v in LlamaConfig(**TINY).to_dict().items() if k != "rope_parameters"}
    cfg = CONVERTERS["llama"].config_to_duomind({**base, "rope_theta": 5e5,
                                                 "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert cfg.rope_base == 5e5 and cfg.rope_scale == {"rope_type": "linear", "factor": 2.0}
    legacy3 = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    cfg = CONVERTERS["llama"].config_to_duomind({**base, "rope_theta": 5e5, "rope_scaling": legacy3})
    assert cfg.rope_scale == {k: v for k, v in legacy3.items()}
    assert CONVERTERS["llama"].config_to_duomind(base).rope_base == 10000.0
    yarn = {"rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ConversionError, match="'yarn'.*default.*linear.*llama3"):
        CONVERTERS["llama"].config_to_duomind({**base, "rope_parameters": yarn})


# --- export choices and what a format cannot express ---

def save_duomind(cfg: ModelConfig, path: Path, seed: int = 0) -> DuoMind:
    torch.manual_seed(seed)
    model = DuoMind(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("fields, target", [
    (dict(), "llama"),
    (dict(qk_norm=True), "qwen3"),
    (dict(attention_window=4), "mistral"),
    (dict(attention_window=4, window_layers=[1]), "qwen2"),
    (dict(qkv_bias=True), "llama"),  # Llama's attention_bias holds it, with a zero o_proj bias
    (dict(norm_style="dssn", hidden_act="gelu_tanh", scale_embeddings=True, tie_word_embeddings=True),
     "gemma2"),
    (dict(mlp_type="moe", num_experts=4, norm_topk_prob=True), "mixtral"),
    (dict(mlp_type="moe", num_experts=4, qk_norm=True, first_dense_layers=1, moe_intermediate_size=32),
     "qwen3_moe"),
])
def test_export_picks_simplest_format(tmp_path, fields, target):
    cfg = ModelConfig(vocab_size=128, bos_token_id=1, eos_token_id=2, **fields)
    model = save_duomind(cfg, tmp_path / "dm")
    convert(tmp_path / "dm", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == target
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids, mask = batch()
    assert max_diff(logits(model, ids), logits(hf, ids)) < 1e-4
    assert max_diff(logits(model, ids, mask), logits(hf, ids, mask), mask) < 1e-4


def test_export_follows_recorded_source(tmp_path):
    # A Qwen3 model without qk-norm differences still goes back to qwen3, not the simpler llama.
    hf = tiny_hf(Qwen3Config(**TINY, head_dim=16))
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "dm")
    assert json.loads((tmp_path / "dm" / cv.SOURCE_RECORD).read_text()) == {"source_architecture": "qwen3"}
    (tmp_path / "dm" / cv.SOURCE_RECORD).unlink()
    convert(tmp_path / "dm", tmp_path / "auto")
    # Without the record, qk_norm still rules out the simpler formats.
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["model_type"] == "qwen3"


@pytest.mark.parametrize("fields, target, message", [
    (dict(qk_norm=True), "llama", r"Llama cannot express qk_norm=True; export as qwen3 \(--to qwen3\)"),
    (dict(o_bias=True), "qwen2", r"Qwen2 cannot express o_bias=True; export as llama"),
    (dict(attention_window=4, window_layers=[1]), "mistral", r"window_layers=\[1\]; export as qwen2"),
    (dict(norm_style="dssn"), "llama", r"'dssn'.*keep it as a DuoMind checkpoint.*Gemma 2 also needs"),
    (dict(norm_style="dssn", hidden_act="gelu_tanh", scale_embeddings=True), "llama", r"--to gemma2"),
    (dict(mlp_bias=True), "qwen3", r"Qwen3 cannot express mlp_bias=True, qk_norm=False; export as llama"),
    (dict(attn_softcap=30.0), "qwen3", r"attn_softcap=30.0"),
    (dict(hidden_act="gelu_tanh", scale_embeddings=True, norm_style="sandwich", attn_scale=0.3), "gemma2",
     r"Gemma 2 cannot express attn_scale=0.3"),
    (dict(mlp_type="moe", num_experts=4, norm_topk_prob=True), "llama",
     r"Llama cannot express mlp_type='moe'; export as mixtral \(--to mixtral\)"),
    (dict(mlp_type="moe", num_experts=4, first_dense_layers=1, qk_norm=True), "mixtral",
     r"Mixtral cannot express .*qk_norm=True, norm_topk_prob=False, first_dense_layers=1; export as qwen3_moe"),
    (dict(mlp_type="moe", num_experts=4, first_dense_layers=1), "mixtral",
     r"intermediate_size=176, norm_topk_prob=False, first_dense_layers=1; no supported Hugging Face format"),
    (dict(mlp_type="moge", num_experts=8, num_experts_per_tok=4, expert_groups=4), "qwen3_moe",
     r"Qwen3-MoE cannot express qk_norm=False, mlp_type=.moge.; no supported.*keep it as a DuoMind checkpoint"),
    (dict(mlp_type="moe", num_experts=4, num_shared_experts=1, router_bias_update_rate=0.01), "qwen3_moe",
     r"num_shared_experts=1, router_bias_update_rate=0.01"),
])
def test_export_errors_name_the_field(fields, target, message):
    with pytest.raises(ConversionError, match=message):
        CONVERTERS[target].config_from_duomind(ModelConfig(**fields))


def test_no_format_fits_lists_reasons(tmp_path):
    save_duomind(ModelConfig(norm_style="dssn"), tmp_path / "dm")
    with pytest.raises(ConversionError, match=r"no supported Hugging Face format.*llama: cannot express"):
        convert(tmp_path / "dm", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# --- files: shards, dtype, tokenizer files, atomic writes ---

@pytest.fixture
def llama_dir(tmp_path):
    hf = tiny_hf(LlamaConfig(**TINY))
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path


def test_sharded_in_and_out_with_tokenizer_files(llama_dir, monkeypatch):
    hf, tmp = llama_dir
    hf.save_pretrained(tmp / "sharded", max_shard_size="40KB")
    assert (tmp / "sharded" / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp / "sharded" / name).write_text("{}")
    monkeypatch.setattr(cv, "MAX_SHARD_BYTES", 40_000)
    convert(tmp / "sharded", tmp / "dm")
    files = {p.name for p in (tmp / "dm").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
            "model.safetensors.index.json"} <= files
    assert len([f for f in files if f.startswith("model-")]) > 1
    ours = AutoModelForCausalLM.from_pretrained(tmp / "dm")
    ids, _ = batch()
    assert max_diff(logits(hf, ids), logits(ours, ids)) < 1e-4


def test_dtype_cast(llama_dir):
    _, tmp = llama_dir
    convert(tmp / "hf", tmp / "dm", dtype="bfloat16")
    assert {t.dtype for t in load_file(tmp / "dm" / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((tmp / "dm" / "config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(ConversionError, match="dtype 'int8'.*bfloat16"):
        convert(tmp / "hf", tmp / "dm2", dtype="int8")


def test_dst_exists_needs_overwrite_and_failures_leave_it_intact(llama_dir, monkeypatch):
    _, tmp = llama_dir
    (tmp / "empty").mkdir()
    convert(tmp / "hf", tmp / "empty")  # an empty DST is fine
    (tmp / "dm").mkdir()
    (tmp / "dm" / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match="already exists.*--overwrite"):
        convert(tmp / "hf", tmp / "dm")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cv, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp / "hf", tmp / "dm", overwrite=True)
    assert (tmp / "dm" / "keep.txt").read_text() == "precious"
    monkeypatch.undo()
    convert(tmp / "hf", tmp / "dm", overwrite=True)
    assert not (tmp / "dm" / "keep.txt").exists() and (tmp / "dm" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp.iterdir()) == ["dm", "empty", "hf"]  # no temp dirs left behind


# --- input errors ---

def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    supported = "duomind, llama, mistral, qwen2, qwen3, gemma2, mixtral, qwen3_moe."
    with pytest.raises(ConversionError, match=f"'gpt2'; supported: {supported}"):
        convert(tmp_path / "src", tmp_path / "dst")


def test_missing_config_and_weights(llama_dir):
    _, tmp = llama_dir
    (tmp / "nocfg").mkdir()
    with pytest.raises(ConversionError, match=r"nocfg/config.json does not exist"):
        convert(tmp / "nocfg", tmp / "out")
    (tmp / "hf" / "model.safetensors").rename(tmp / "elsewhere.safetensors")
    with pytest.raises(ConversionError, match=r"no weights in .*hf: expected model.safetensors"):
        convert(tmp / "hf", tmp / "out")
    (tmp / "hf" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConversionError, match=r"pytorch_model.*re-save them as safetensors"):
        convert(tmp / "hf", tmp / "out")
    assert not (tmp / "out").exists()


def test_shape_mismatch_names_tensor(llama_dir):
    _, tmp = llama_dir
    state = load_file(tmp / "hf" / "model.safetensors")
    state["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(state, tmp / "hf" / "model.safetensors")
    expected = r"'model.layers.1.self_attn.k_proj.weight' has shape \[16, 64\].*implies \[32, 64\]"
    with pytest.raises(ConversionError, match=expected):
        convert(tmp / "hf", tmp / "out")


def test_missing_and_unexpected_tensors_are_listed(llama_dir):
    _, tmp = llama_dir
    state = load_file(tmp / "hf" / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    save_file(state, tmp / "hf" / "model.safetensors")
    with pytest.raises(ConversionError, match=r"missing 1 tensor\(s\): model.layers.0.mlp.up_proj.weight; "
                                              r"unexpected 1 tensor\(s\): model.layers.0.mlp.extra.weight"):
        convert(tmp / "hf", tmp / "out")


def test_to_is_checked(llama_dir):
    _, tmp = llama_dir
    with pytest.raises(ConversionError, match="converts to DuoMind; --to only"):
        convert(tmp / "hf", tmp / "out", to="qwen2")
    convert(tmp / "hf", tmp / "dm")
    with pytest.raises(ConversionError, match="'gpt2'; supported:"):
        convert(tmp / "dm", tmp / "out", to="gpt2")


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_expert_count_disagreeing_with_config_is_refused(tmp_path, arch):
    hf = tiny_hf(CASES[arch]())
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    key = "num_local_experts"  # transformers 5 writes this key for both formats
    config[key] = 8
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"layer \d holds experts 0..3 \(4\) but config.json says 8 \(num_"):
        convert(tmp_path / "hf", tmp_path / "out")
    config[key] = 4
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    state = load_file(tmp_path / "hf" / "model.safetensors")
    gone = next(k for k in state if k.endswith("experts.2.w2.weight") or k.endswith("experts.2.down_proj.weight"))
    del state[gone]
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ConversionError, match=f"expert tensor '{gone}' is missing"):
        convert(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_qwen3_moe_with_interleaved_dense_layers_is_refused():
    hf = Qwen3MoeConfig(**TINY, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2).to_dict()  # 0 dense, 1 sparse
    assert CONVERTERS["qwen3_moe"].config_to_duomind(hf).first_dense_layers == 1
    hf = Qwen3MoeConfig(**{**TINY, "num_hidden_layers": 3}, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1]).to_dict()
    with pytest.raises(ConversionError, match=r"dense layers \[1\].*only the first n layers dense"):
        CONVERTERS["qwen3_moe"].config_to_duomind(hf)


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="'llama' is already registered"):
        cv.register(CONVERTERS["llama"])


# --- CLI ---

def test_cli_convert_prints_and_fails_cleanly(llama_dir, capsys):
    hf, tmp = llama_dir
    cli_main(["convert", str(tmp / "hf"), str(tmp / "dm")])
    out = capsys.readouterr().out
    n = sum(p.numel() for p in hf.parameters())
    assert f"llama -> duomind: {n:,} parameters (float32)" in out and "model.safetensors" in out
    cli_main(["convert", str(tmp / "dm"), str(tmp / "back"), "--to", "mistral"])
    assert "duomind -> mistral" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already exists.*--overwrite"):
        cli_main(["convert", str(tmp / "hf"), str(tmp / "dm")])

