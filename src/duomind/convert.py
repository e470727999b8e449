"""Hugging Face <-> DuoMind checkpoint converters (DESIGN.md section 2: converters at the border).

Each supported HF architecture is a `Converter`: two pure config functions and a table of weight renames.
Conversion is pure tensor mapping over safetensors; the HF model class is never built, so any checkpoint
that fits in memory converts::

    HF dir (config.json + *.safetensors)  --config_to_duomind, renames-->  DuoMind dir
    DuoMind dir  --config_from_duomind, renames, zero biases the target always has-->  HF dir

The direction comes from SRC's config.json `model_type`: "duomind" is exported, a supported HF type imported.
Mixture-of-experts formats (Mixtral, Qwen3-MoE) store one tensor per expert; they are stacked into DuoMind's
(N, ...) expert tensors on import and split again on export (`ExpertLayout`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from duomind.config import ConfigError, ModelConfig
from duomind.model import DuoMind, DuoMindConfig  # importing it also registers model_type "duomind" with HF

# Files copied along unchanged when present: tokenizer, chat template, generation defaults.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
                   "merges.txt", "added_tokens.json")
# Written into imported DuoMind checkpoints so export picks the same HF format by default.
SOURCE_RECORD = "duomind_source.json"
# Shard size of written safetensors (HF's default); larger checkpoints get an index file.
MAX_SHARD_BYTES = 5 * 2**30
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the problem and the fix."""


# --- weight names -------------------------------------------------------------------------------------------

class Rename(NamedTuple):
    """One weight-name rule; `{i}` stands for the layer index."""

    hf: str
    ours: str
    offset: float = 0.0  # ours = hf + offset: Gemma's RMSNorm scales by (1 + w), ours by w


def _renames(norms: dict[str, str], norm_offset: float = 0.0) -> tuple[Rename, ...]:
    """The shared table (embeddings, attention, MLP, head) plus an architecture's per-layer norm names."""
    layer = "model.layers.{i}."
    rows = [Rename("model.embed_tokens.weight", "embed.weight"), Rename("lm_head.weight", "lm_head.weight"),
            Rename("model.norm.weight", "norm.weight", norm_offset)]
    rows += [Rename(f"{layer}{hf}.weight", f"layers.{{i}}.{ours}.weight", norm_offset)
             for hf, ours in norms.items()]
    rows += [Rename(f"{layer}self_attn.{p}_proj.{t}", f"layers.{{i}}.attn.{p}_proj.{t}")
             for p in "qkvo" for t in ("weight", "bias")]
    rows += [Rename(f"{layer}self_attn.{p}_norm.weight", f"layers.{{i}}.attn.{p}_norm.weight", norm_offset)
             for p in "qk"]
    rows += [Rename(f"{layer}mlp.{p}_proj.{t}", f"layers.{{i}}.mlp.{p}_proj.{t}")
             for p in ("gate", "up", "down") for t in ("weight", "bias")]
    return tuple(rows)


# Llama's post_attention_layernorm is the MLP's PRE-norm ...
PRE_NORM_RENAMES = _renames({"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"})
# ... while Gemma 2's is the attention's POST-norm, and every Gemma norm stores w for a (1 + w) gain.
SANDWICH_RENAMES = _renames({"input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
                             "pre_feedforward_layernorm": "mlp_norm",
                             "post_feedforward_layernorm": "mlp_post_norm"}, norm_offset=1.0)



def _moe_renames(block: str) -> tuple[Rename, ...]:
    """Router and stacked experts of a MoE block; the stacked HF names are the ones `ExpertLayout.fuse` makes."""
    layer = "model.layers.{i}."
    return (Rename(f"{layer}{block}.gate.weight", "layers.{i}.mlp.router.weight"),
            Rename(f"{layer}{block}.experts.gate_up_proj", "layers.{i}.mlp.experts.gate_up_proj"),
            Rename(f"{layer}{block}.experts.down_proj", "layers.{i}.mlp.experts.down_proj"))


MIXTRAL_RENAMES = PRE_NORM_RENAMES + _moe_renames("block_sparse_moe")
QWEN3_MOE_RENAMES = PRE_NORM_RENAMES + _moe_renames("mlp")

_LAYER_INDEX = re.compile(r"(?<=layers\.)\d+(?=\.)")


def _map_name(name: str, table: dict[str, Rename], to_hf: bool) -> tuple[str, Rename] | None:
    m = _LAYER_INDEX.search(name)
    rule = table.get(name if m is None else f"{name[:m.start()]}{{i}}{name[m.end():]}")
    if rule is None:
        return None
    return (rule.hf if to_hf else rule.ours).format(i=m.group() if m else ""), rule


def _rename(state: dict[str, torch.Tensor], renames: tuple[Rename, ...], to_hf: bool,
            dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Rename every tensor by the table, folding norm offsets and casting to `dtype` (None: keep)."""
    table = {(r.ours if to_hf else r.hf): r for r in renames}
    out = {}
    for name, tensor in state.items():
        mapped = _map_name(name, table, to_hf)
        if mapped is None:
            raise ConversionError(f"tensor {name!r} has no counterpart in the target format.")
        new, rule = mapped
        target = dtype or tensor.dtype
        if rule.offset:  # fold in float32 so small gains survive the shift by 1
            tensor = tensor.float() + (-rule.offset if to_hf else rule.offset)
        out[new] = tensor.to(target).contiguous()
    return out


def duomind_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of a DuoMind model for `cfg` (a tied head is left out)."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = DuoMind(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def _listing(names: list[str], limit: int = 12) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_tensors(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise unless `state` holds exactly the expected tensor names with the expected shapes."""
    missing = [n for n in expected if n not in state]
    unexpected = sorted(n for n in state if n not in expected)
    if missing or unexpected:
        parts = [f"missing {len(missing)} tensor(s): {_listing(missing)}"] if missing else []
        parts += [f"unexpected {len(unexpected)} tensor(s): {_listing(unexpected)}"] if unexpected else []
        raise ConversionError(f"{where}: the weights do not match config.json ({'; '.join(parts)}). "
                              "Check that config.json belongs to these weights.")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ConversionError(f"{where}: tensor {name!r} has shape {list(state[name].shape)} but "
                                  f"config.json implies {list(shape)}.")


@dataclass(frozen=True)
class ExpertLayout:
    """How an HF MoE format names its experts: one tensor per expert and projection.

    Import stacks them into `model.layers.{i}.{block}.experts.gate_up_proj` (N, 2F, d) and `.down_proj`
    (N, d, F), the names the rename table maps onto DuoMind's; export splits them again.
    """

    block: str  # "block_sparse_moe" (Mixtral) or "mlp" (Qwen3-MoE)
    gate: str
    up: str
    down: str
    count_key: str  # the config.json key of the expert count, for error messages

    def _name(self, i: int, e: int, proj: str) -> str:
        return f"model.layers.{i}.{self.block}.experts.{e}.{proj}.weight"

    def fuse(self, state: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
        """Stack per-expert tensors; a layer holding another number of experts than config.json says is refused."""
        found: dict[int, set[int]] = {}
        pattern = re.compile(rf"model\.layers\.(\d+)\.{re.escape(self.block)}\.experts\.(\d+)\.")
        for name in state:
            m = pattern.match(name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        out = dict(state)
        n = cfg.num_experts
        for i in range(cfg.num_hidden_layers):
            if not cfg.is_moe_layer(i):
                continue
            fused = f"model.layers.{i}.{self.block}.experts."
            if fused + "gate_up_proj" in state and i not in found:
                continue  # already stacked (transformers 5's in-memory layout)
            have = found.get(i, set())
            if have != set(range(n)):
                held = f"experts {min(have)}..{max(have)} ({len(have)})" if have else "no experts"
                raise ConversionError(f"{where}: layer {i} holds {held} but config.json says {n} ({self.count_key}); "
                                      "the config and the weights disagree (fix config.json or use the matching "
                                      "weights).")
            try:
                gate_up = [torch.cat([out.pop(self._name(i, e, self.gate)), out.pop(self._name(i, e, self.up))])
                           for e in range(n)]
                down = [out.pop(self._name(i, e, self.down)) for e in range(n)]
            except KeyError as err:
                raise ConversionError(f"{where}: expert tensor {err.args[0]!r} is missing.") from None
            out[fused + "gate_up_proj"] = torch.stack(gate_up)
            out[fused + "down_proj"] = torch.stack(down)
        extra = sorted(i for i in found if not cfg.is_moe_layer(i))
        if extra:
            raise ConversionError(f"{where}: layers {extra} hold experts but config.json makes them dense; the "
                                  "config and the weights disagree.")
        return out

    def split(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """Inverse of `fuse`: one tensor per expert and projection."""
        out = dict(state)
        f = cfg.moe_intermediate_size
        for i in range(cfg.num_hidden_layers):
            fused = f"model.layers.{i}.{self.block}.experts."
            if fused + "gate_up_proj" not in out:
                continue
            gate_up, down = out.pop(fused + "gate_up_proj"), out.pop(fused + "down_proj")
            for e in range(gate_up.shape[0]):
                out[self._name(i, e, self.gate)] = gate_up[e, :f].contiguous()
                out[self._name(i, e, self.up)] = gate_up[e, f:].contiguous()
                out[self._name(i, e, self.down)] = down[e].contiguous()
        return out


# --- configs ------------------------------------------------------------------------------------------------

ACTIVATIONS_IN = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
ACTIVATIONS_OUT = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}
ROPE_KEYS = {"default": (), "linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def _need(hf: dict[str, Any], key: str) -> Any:
    if hf.get(key) is None:
        raise ConversionError(f"config.json has no {key!r}, which this architecture needs.")
    return hf[key]


def _act_in(name: str) -> str:
    if name not in ACTIVATIONS_IN:
        raise ConversionError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS_IN)}.")
    return ACTIVATIONS_IN[name]


def _rope_in(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE from transformers-5 `rope_parameters` or the older top-level `rope_theta` / `rope_scaling`."""
    if hf.get("rope_parameters"):
        params = dict(hf["rope_parameters"])
        if all(isinstance(v, dict) for v in params.values()):
            raise ConversionError("per-layer-type rope_parameters are not supported; DuoMind uses one RoPE.")
    else:
        params = dict(hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConversionError("partial_rotary_factor != 1 (partial RoPE) is not supported.")
    if kind not in ROPE_KEYS:
        raise ConversionError(f"RoPE type {kind!r} is not supported; supported: {list(ROPE_KEYS)}.")
    if kind == "llama3":  # transformers' own default for this key
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    missing = [k for k in ROPE_KEYS[kind] if params.get(k) is None]
    if missing:
        raise ConversionError(f"RoPE type {kind!r} needs {missing} in rope_parameters.")
    scale = {"rope_type": kind, **{k: params[k] for k in ROPE_KEYS[kind]}} if kind != "default" else None
    return {"rope_base": float(theta), "rope_scale": scale}


def _shared_in(hf: dict[str, Any]) -> dict[str, Any]:
    heads, d = _need(hf, "num_attention_heads"), _need(hf, "hidden_size")
    return dict(
        vocab_size=_need(hf, "vocab_size"), hidden_size=d, intermediate_size=_need(hf, "intermediate_size"),
        num_hidden_layers=_need(hf, "num_hidden_layers"), num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or d // heads,
        max_position_embeddings=hf["max_position_embeddings"], rms_norm_eps=hf["rms_norm_eps"],
        tie_word_embeddings=bool(hf["tie_word_embeddings"]), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"), **_rope_in(hf),
    )


def _shared_out(cfg: ModelConfig) -> dict[str, Any]:
    rope = {"rope_type": "default", **(cfg.rope_scale or {}), "rope_theta": cfg.rope_base}
    rope["rope_type"] = rope.pop("type", rope["rope_type"])
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
             "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    return {**{k: getattr(cfg, k) for k in names}, "rope_parameters": rope, "use_cache": True}


def _window_layers(cfg: ModelConfig) -> list[int]:
    return [i for i, w in enumerate(cfg.uses_window) if w]


def _windows_in(window: int | None, layer_types: list[str]) -> dict[str, Any]:
    layers = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    on = window is not None and bool(layers)
    return {"attention_window": window if on else None, "window_layers": layers if on else None}


def _layer_types(cfg: ModelConfig) -> list[str]:
    return ["sliding_attention" if w else "full_attention" for w in cfg.uses_window]


def _llama_in(hf: dict[str, Any]) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias"))
    return dict(hidden_act=_act_in(hf["hidden_act"]), qkv_bias=bias, o_bias=bias,
                mlp_bias=bool(hf.get("mlp_bias")))


def _llama_out(cfg: ModelConfig) -> dict[str, Any]:
    return dict(hidden_act=ACTIVATIONS_OUT[cfg.hidden_act], attention_bias=cfg.qkv_bias or cfg.o_bias,
                mlp_bias=cfg.mlp_bias)


def _mistral_in(hf: dict[str, Any]) -> dict[str, Any]:
    # Mistral slides every layer over the same window (None: full attention).
    return dict(hidden_act=_act_in(hf["hidden_act"]), attention_window=hf.get("sliding_window"))


def _mistral_out(cfg: ModelConfig) -> dict[str, Any]:
    return dict(hidden_act=ACTIVATIONS_OUT[cfg.hidden_act],
                sliding_window=cfg.attention_window if _window_layers(cfg) else None)


def _qwen_windows_in(hf: dict[str, Any]) -> dict[str, Any]:
    # Qwen's window is off unless use_sliding_window; layer_types (transformers 5) or else the layers from
    # max_window_layers on say which layers slide.
    if not hf.get("use_sliding_window"):
        return _windows_in(None, [])
    start = hf.get("max_window_layers", 0)
    types = hf.get("layer_types") or ["sliding_attention" if i >= start else "full_attention"
                                      for i in range(hf["num_hidden_layers"])]
    return _windows_in(hf.get("sliding_window"), types)


def _qwen_windows_out(cfg: ModelConfig) -> dict[str, Any]:
    layers = _window_layers(cfg)
    return dict(use_sliding_window=bool(layers), sliding_window=cfg.attention_window if layers else None,
                max_window_layers=layers[0] if layers else cfg.num_hidden_layers,
                layer_types=_layer_types(cfg))


def _qwen2_in(hf: dict[str, Any]) -> dict[str, Any]:
    return dict(hidden_act=_act_in(hf["hidden_act"]), qkv_bias=True, o_bias=False, **_qwen_windows_in(hf))


def _qwen2_out(cfg: ModelConfig) -> dict[str, Any]:
    return dict(hidden_act=ACTIVATIONS_OUT[cfg.hidden_act], **_qwen_windows_out(cfg))


def _qwen3_in(hf: dict[str, Any]) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias"))
    return dict(hidden_act=_act_in(hf["hidden_act"]), qk_norm=True, qkv_bias=bias, o_bias=bias,
                **_qwen_windows_in(hf))


def _qwen3_out(cfg: ModelConfig) -> dict[str, Any]:
    return dict(hidden_act=ACTIVATIONS_OUT[cfg.hidden_act], attention_bias=cfg.qkv_bias or cfg.o_bias,
                **_qwen_windows_out(cfg))


def _gemma2_in(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("use_bidirectional_attention"):
        raise ConversionError("Gemma 2 with use_bidirectional_attention=True is not causal; DuoMind is.")
    bias = bool(hf.get("attention_bias"))
    types = hf.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                      for i in range(hf["num_hidden_layers"])]
    return dict(norm_style="sandwich", hidden_act=_act_in(hf["hidden_activation"]), scale_embeddings=True,
                attn_scale=hf["query_pre_attn_scalar"] ** -0.5, attn_softcap=hf.get("attn_logit_softcapping"),
                final_softcap=hf.get("final_logit_softcapping"), qkv_bias=bias, o_bias=bias,
                **_windows_in(hf.get("sliding_window"), types))


def _gemma2_out(cfg: ModelConfig) -> dict[str, Any]:
    scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim**-0.5
    return dict(hidden_activation=ACTIVATIONS_OUT[cfg.hidden_act],
                # an integer in Gemma 2; a scale it cannot hold fails the read-back check
                query_pre_attn_scalar=max(1, round(scale**-2)),
                attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.final_softcap,
                attention_bias=cfg.qkv_bias or cfg.o_bias, layer_types=_layer_types(cfg),
                # transformers builds Gemma 2's sliding mask even when no layer uses it, and needs a size then
                sliding_window=cfg.attention_window if _window_layers(cfg) else cfg.max_position_embeddings)


def _moe_in(hf: dict[str, Any], count: int, moe_width: int) -> dict[str, Any]:
    if not count:
        raise ConversionError("config.json has 0 experts: this is a dense model; convert it as its dense architecture.")
    return dict(mlp_type="moe", num_experts=count, num_experts_per_tok=_need(hf, "num_experts_per_tok"),
                moe_intermediate_size=moe_width, router_aux_loss_coef=float(hf.get("router_aux_loss_coef") or 0.0))


def _mixtral_in(hf: dict[str, Any]) -> dict[str, Any]:
    # Every Mixtral layer is sparse, its experts are intermediate_size wide, and it always renormalises.
    return dict(**_mistral_in(hf), **_moe_in(hf, _need(hf, "num_local_experts"), _need(hf, "intermediate_size")),
                norm_topk_prob=True)


def _mixtral_out(cfg: ModelConfig) -> dict[str, Any]:
    # Mixtral writes head_dim null when it is hidden_size / heads, as transformers' own config does.
    head_dim = None if cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size else cfg.head_dim
    return dict(**_mistral_out(cfg), head_dim=head_dim, num_local_experts=cfg.num_experts,
                num_experts_per_tok=cfg.num_experts_per_tok,
                intermediate_size=cfg.moe_intermediate_size, router_aux_loss_coef=cfg.router_aux_loss_coef,
                router_jitter_noise=0.0, output_router_logits=False)


def _qwen3_moe_in(hf: dict[str, Any]) -> dict[str, Any]:
    count = hf.get("num_experts", hf.get("num_local_experts"))
    layers, step, only = hf["num_hidden_layers"], hf.get("decoder_sparse_step") or 1, set(hf.get("mlp_only_layers") or [])
    dense = [i for i in range(layers) if i in only or (i + 1) % step]
    if dense != list(range(len(dense))):
        raise ConversionError(f"Qwen3-MoE with dense layers {dense} (mlp_only_layers / decoder_sparse_step) is not "
                              "supported: DuoMind keeps only the first n layers dense.")
    return dict(**_qwen3_in(hf), **_moe_in(hf, count, _need(hf, "moe_intermediate_size")),
                norm_topk_prob=bool(hf.get("norm_topk_prob")), first_dense_layers=len(dense))


def _qwen3_moe_out(cfg: ModelConfig) -> dict[str, Any]:
    return dict(**_qwen3_out(cfg), num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
                decoder_sparse_step=1, mlp_only_layers=list(range(cfg.first_dense_layers)),
                router_aux_loss_coef=cfg.router_aux_loss_coef, output_router_logits=False)


# These shape training, not the function the weights compute.
_TRAINING_ONLY = ("init", "init_std", "c_attn", "c_mlp", "router_aux_loss_coef")
_MOE_FIELDS = ("num_experts", "num_experts_per_tok", "expert_groups", "moe_intermediate_size", "num_shared_experts",
               "norm_topk_prob", "router_scale", "first_dense_layers", "router_bias_update_rate")
_ZERO_FILLABLE = ("qkv_bias", "o_bias")  # a target may hold biases the model lacks: they are written as zeros


def _inference_view(cfg: ModelConfig) -> dict[str, Any]:
    """The fields that decide what a model computes, in one canonical spelling."""
    view = {k: v for k, v in cfg.to_dict().items() if k not in _TRAINING_ONLY + _ZERO_FILLABLE}
    # DSSN is the sandwich layout with a depth-scaled init: the same function once trained.
    view["norm_style"] = "sandwich" if cfg.norm_style == "dssn" else cfg.norm_style
    view["attn_scale"] = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim**-0.5
    layers = _window_layers(cfg)
    view["attention_window"] = cfg.attention_window if layers else None
    view["window_layers"] = layers or None
    scale = dict(cfg.rope_scale or {})
    scale["rope_type"] = scale.pop("type", scale.get("rope_type", "default"))
    view["rope_scale"] = scale if scale["rope_type"] != "default" else None
    if cfg.mlp_type == "dense":
        for name in _MOE_FIELDS:
            view.pop(name)
    else:
        if not cfg.first_dense_layers:
            view.pop("intermediate_size")  # no dense MLP left to use it
        if cfg.mlp_type == "moe":
            view.pop("expert_groups")  # only places experts on devices; routing ignores it
        view["router_bias_update_rate"] = cfg.router_bias_update_rate > 0  # the bias tensor changes routing
    return view


_ABSENT = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


@dataclass(frozen=True)
class Converter:
    """How one HF architecture maps onto DuoMind: config readers/writers and a weight-name table.

    `read` and `write` handle only what differs from the fields every architecture shares; `defaults` are
    the HF defaults of keys that older config.json files may omit.
    """

    name: str
    label: str
    architecture: str
    read: Callable[[dict[str, Any]], dict[str, Any]]
    write: Callable[[ModelConfig], dict[str, Any]]
    renames: tuple[Rename, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    experts: ExpertLayout | None = None  # MoE formats: how per-expert tensors are named

    def config_to_duomind(self, hf_config: dict[str, Any]) -> ModelConfig:
        """Map an HF config.json dict to a `ModelConfig`."""
        hf = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, **self.defaults, **hf_config}
        try:
            return ModelConfig(**{**_shared_in(hf), **self.read(hf)})
        except (ConfigError, KeyError, TypeError) as err:
            raise ConversionError(f"{self.label} config.json: {err}") from err

    def _config_unchecked(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"architectures": [self.architecture], "model_type": self.name, **_shared_out(cfg),
                **self.write(cfg)}

    def unexpressible(self, cfg: ModelConfig) -> list[str]:
        """ModelConfig fields this format cannot hold: the written config must read back to the same model."""
        back = self.config_to_duomind(self._config_unchecked(cfg))
        ours, theirs = _inference_view(cfg), _inference_view(back)
        bad = [k for k in ours if not _same(ours[k], theirs.get(k, _ABSENT))]
        if "mlp_type" in bad:  # a dense format cannot hold any expert field: naming mlp_type says it all
            bad = [k for k in bad if k not in _MOE_FIELDS]
        return bad + [k for k in _ZERO_FILLABLE if getattr(cfg, k) and not getattr(back, k)]

    def config_from_duomind(self, cfg: ModelConfig) -> dict[str, Any]:
        """Map a `ModelConfig` to an HF config.json dict; `ConversionError` names what it cannot hold."""
        bad = self.unexpressible(cfg)
        if bad:
            fields = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in bad)
            others = [c.name for c in CONVERTERS.values() if c is not self and not c.unexpressible(cfg)]
            hint = (f"; export as {' or '.join(others)} (--to {others[0]})" if others else
                    "; no supported Hugging Face format can hold it, so keep it as a DuoMind checkpoint")
            if "norm_style" in bad and cfg.norm_style != "pre" and "gemma2" not in others:
                hint += (f" (norm_style={cfg.norm_style!r} has no HF equivalent but Gemma 2's sandwich "
                         "layout, and Gemma 2 also needs scale_embeddings=True and hidden_act='gelu_tanh')")
            raise ConversionError(f"{self.label} cannot express {fields}{hint}.")
        return self._config_unchecked(cfg)


CONVERTERS: dict[str, Converter] = {}


def register(converter: Converter) -> Converter:
    """Add a converter under its HF model_type; duplicate names are refused."""
    if converter.name in CONVERTERS:
        raise ValueError(f"a converter named {converter.name!r} is already registered.")
    CONVERTERS[converter.name] = converter
    return converter


# Registry order is the export preference when no format is asked for: the simplest that fits wins.
register(Converter("llama", "Llama", "LlamaForCausalLM", _llama_in, _llama_out, PRE_NORM_RENAMES,
                   dict(max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)))
register(Converter("mistral", "Mistral", "MistralForCausalLM", _mistral_in, _mistral_out, PRE_NORM_RENAMES,
                   dict(max_position_embeddings=131072, bos_token_id=1, eos_token_id=2, sliding_window=4096)))
register(Converter("qwen2", "Qwen2", "Qwen2ForCausalLM", _qwen2_in, _qwen2_out, PRE_NORM_RENAMES,
                   dict(max_position_embeddings=32768, sliding_window=4096, max_window_layers=28)))
register(Converter("qwen3", "Qwen3", "Qwen3ForCausalLM", _qwen3_in, _qwen3_out, PRE_NORM_RENAMES,
                   dict(max_position_embeddings=32768, head_dim=128, sliding_window=4096,
                        max_window_layers=28)))
register(Converter("gemma2", "Gemma 2", "Gemma2ForCausalLM", _gemma2_in, _gemma2_out, SANDWICH_RENAMES,
                   dict(max_position_embeddings=8192, head_dim=256, tie_word_embeddings=True, pad_token_id=0,
                        eos_token_id=1, bos_token_id=2, hidden_activation="gelu_pytorch_tanh",
                        query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                        final_logit_softcapping=30.0)))
register(Converter("mixtral", "Mixtral", "MixtralForCausalLM", _mixtral_in, _mixtral_out, MIXTRAL_RENAMES,
                   dict(max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                        rope_theta=1e6, num_local_experts=8, num_experts_per_tok=2),
                   ExpertLayout("block_sparse_moe", "w1", "w3", "w2", "num_local_experts")))
register(Converter("qwen3_moe", "Qwen3-MoE", "Qwen3MoeForCausalLM", _qwen3_moe_in, _qwen3_moe_out,
                   QWEN3_MOE_RENAMES,
                   dict(max_position_embeddings=32768, sliding_window=4096, max_window_layers=28,
                        decoder_sparse_step=1, norm_topk_prob=False, num_experts_per_tok=8),
                   ExpertLayout("mlp", "gate_proj", "up_proj", "down_proj", "num_experts or num_local_experts")))


def get_converter(model_type: str) -> Converter:
    if model_type not in CONVERTERS:
        raise ConversionError(f"unsupported architecture {model_type!r}; supported: duomind, "
                              f"{', '.join(CONVERTERS)}.")
    return CONVERTERS[model_type]


# --- in-memory conversion -----------------------------------------------------------------------------------

def hf_to_duomind_state(model_type: str, hf_state: dict[str, torch.Tensor], hf_config: dict[str, Any],
                        dtype: torch.dtype | None = None, where: str = "checkpoint"
                        ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Map an HF state dict and config.json dict to a `ModelConfig` and a DuoMind state dict."""
    conv = get_converter(model_type)
    cfg = conv.config_to_duomind(hf_config)
    hf_names = {r.ours: r for r in conv.renames}
    expected = {_map_name(n, hf_names, to_hf=True)[0]: s for n, s in duomind_shapes(cfg).items()}
    # Older checkpoints store RoPE tables, and some store a tied head: neither is a weight of ours.
    state = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if conv.experts is not None:
        state = conv.experts.fuse(state, cfg, f"{where} ({conv.label})")
    _check_tensors(state, expected, f"{where} ({conv.label})")
    return cfg, _rename(state, conv.renames, to_hf=False, dtype=dtype)


def duomind_to_hf_state(model_type: str, cfg: ModelConfig, state: dict[str, torch.Tensor],
                        dtype: torch.dtype | None = None, where: str = "DuoMind checkpoint"
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map a DuoMind config and state dict to an HF config.json dict and state dict of `model_type`."""
    conv = get_converter(model_type)
    hf_config = conv.config_from_duomind(cfg)
    state = dict(state)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _check_tensors(state, duomind_shapes(cfg), where)
    like = state["embed.weight"]
    for name, shape in duomind_shapes(conv.config_to_duomind(hf_config)).items():
        state.setdefault(name, torch.zeros(shape, dtype=like.dtype))  # biases the target format always has
    hf_config["dtype"] = str(dtype or like.dtype).removeprefix("torch.")
    out = _rename(state, conv.renames, to_hf=True, dtype=dtype)
    return hf_config, (conv.experts.split(out, cfg) if conv.experts is not None else out)


# --- files --------------------------------------------------------------------------------------------------

def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, with errors that name the path."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"{path} is not a directory; expected a checkpoint directory holding "
                              "config.json and model.safetensors.")
    file = path / "config.json"
    if not file.is_file():
        raise ConversionError(f"{file} does not exist; a checkpoint directory needs config.json next to its "
                              "safetensors weights.")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConversionError(f"{file} has no 'model_type'; supported: duomind, {', '.join(CONVERTERS)}.")
    return config


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: model.safetensors, or shards listed in its index."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (path / shard).is_file():
                raise ConversionError(f"{path / shard} is listed in {index.name} but does not exist; the "
                                      "checkpoint is incomplete.")
            state.update(load_file(path / shard))
        return state
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    if any(path.glob("pytorch_model*.bin")):
        raise ConversionError(f"{path} holds pickled weights (pytorch_model*.bin), which DuoMind does not "
                              "load; re-save them as safetensors first, e.g. "
                              "`AutoModelForCausalLM.from_pretrained(path).save_pretrained(new_path)`.")
    raise ConversionError(f"no weights in {path}: expected model.safetensors, or "
                          "model-0000x-of-0000y.safetensors shards with model.safetensors.index.json.")


def _write_json(file: Path, data: dict[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_weights(state: dict[str, torch.Tensor], directory: Path) -> list[str]:
    """Write safetensors, sharded with an index above MAX_SHARD_BYTES as HF does; returns the file names."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], directory / "model.safetensors", metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(directory / "model.safetensors.index.json", {"metadata": {"total_size": total},
                                                              "weight_map": weight_map})
    return [*names, "model.safetensors.index.json"]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite and (dst.is_file() or any(dst.iterdir())):
        raise ConversionError(f"{dst} already exists and is not empty; pass --overwrite true "
                              "(overwrite=True in Python) to replace it.")


@contextmanager
def _atomic_dir(dst: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir next to `dst`; on success fsync it and rename it into place (old DST removed last)."""
    _check_dst(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        old = None
        if dst.exists():  # moved aside, not deleted, so a failed rename leaves the old DST in place
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent)) / dst.name
            os.rename(dst, old)
        try:
            os.rename(tmp, dst)
        except OSError:
            if old is not None:
                os.rename(old, dst)
            raise
        _fsync(dst.parent)
        if old is not None:
            shutil.rmtree(old.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _duomind_config_from_json(config: dict[str, Any], where: Path) -> ModelConfig:
    try:
        return DuoMindConfig.from_dict(config).to_model_config()
    except (ConfigError, TypeError) as err:
        raise ConversionError(f"{where}/config.json: {err}") from err


def _source_hint(src: Path) -> str | None:
    try:
        return json.loads((src / SOURCE_RECORD).read_text()).get("source_architecture")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _pick_target(cfg: ModelConfig, hint: str | None) -> str:
    """The recorded source format if it still fits, else the first registered format that can hold `cfg`."""
    if hint in CONVERTERS and not CONVERTERS[hint].unexpressible(cfg):
        return hint
    for name, conv in CONVERTERS.items():
        if not conv.unexpressible(cfg):
            return name
    reasons = "; ".join(f"{c.name}: cannot express {', '.join(c.unexpressible(cfg))}"
                        for c in CONVERTERS.values())
    raise ConversionError(f"no supported Hugging Face format can express this model ({reasons}); keep it as "
                          "a DuoMind checkpoint.")


def _parse_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


@dataclass
class ConversionReport:
    """What one conversion did (printed by the CLI)."""

    source_format: str
    target_format: str
    num_parameters: int
    dtype: str
    dst: Path
    files: list[str]


def convert_report(src: str | Path, dst: str | Path, to: str | None = None, dtype: str | None = None,
                   overwrite: bool = False) -> ConversionReport:
    """`convert`, returning a `ConversionReport` instead of just the path."""
    src, dst = Path(src), Path(dst)
    torch_dtype = _parse_dtype(dtype)
    config = read_config(src)
    source = config["model_type"]
    if source != "duomind":
        get_converter(source)  # unknown architectures fail before any weights are read
        if to not in (None, "duomind"):
            raise ConversionError(f"{src} is a {source} checkpoint, which converts to DuoMind; --to only "
                                  "chooses the Hugging Face format when exporting a DuoMind checkpoint.")
    elif to is not None:
        get_converter(to)
    if dst.resolve() == src.resolve():
        raise ConversionError(f"SRC and DST are the same directory ({src}); choose another DST.")
    _check_dst(dst, overwrite)
    state = read_weights(src)
    if source == "duomind":
        cfg = _duomind_config_from_json(config, src)
        target = to or _pick_target(cfg, _source_hint(src))
        out_config, out_state = duomind_to_hf_state(target, cfg, state, torch_dtype, where=str(src))
        extras: dict[str, dict[str, Any]] = {}
    else:
        target = "duomind"
        cfg, out_state = hf_to_duomind_state(source, state, config, torch_dtype, where=str(src))
        out_dtype = str(next(iter(out_state.values())).dtype).removeprefix("torch.")
        out_config = DuoMindConfig(**cfg.to_dict(), architectures=["DuoMind"], dtype=out_dtype).to_diff_dict()
        extras = {SOURCE_RECORD: {"source_architecture": source}}
    with _atomic_dir(dst, overwrite) as tmp:
        _write_json(tmp / "config.json", out_config)
        files = ["config.json", *save_weights(out_state, tmp)]
        for name, data in extras.items():
            _write_json(tmp / name, data)
            files.append(name)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
                files.append(name)
    return ConversionReport(source, target, sum(t.numel() for t in out_state.values()),
                            str(next(iter(out_state.values())).dtype).removeprefix("torch."), dst, files)


def convert(src: str | Path, dst: str | Path, to: str | None = None, dtype: str | None = None,
            overwrite: bool = False) -> Path:
    """Convert a checkpoint directory between Hugging Face and DuoMind; the direction comes from SRC.

    Args:
        src: Checkpoint directory (config.json + safetensors). model_type "duomind" is exported to HF; a
            supported HF model_type is imported.
        dst: Output directory, written atomically; must be absent or empty unless `overwrite`.
        to: HF format to export to (see `CONVERTERS`); default: the recorded source format, else the
            simplest format that can express the model. Import ignores it (only "duomind" is accepted).
        dtype: Cast weights to "float32", "bfloat16" or "float16"; default keeps the source dtypes.
        overwrite: Replace an existing non-empty DST.

    Returns:
        The path of the written checkpoint.
    """
    return convert_report(src, dst, to, dtype, overwrite).dst


def load_hf_model_as_duomind(path: str | Path, dtype: str | None = None) -> Any:
    """Load an HF (or DuoMind) checkpoint directory as a `DuoMind` model in eval mode (no files written)."""
    path = Path(path)
    config = read_config(path)
    if config["model_type"] == "duomind":
        return DuoMind.from_pretrained(path, **({"dtype": DTYPES[dtype]} if dtype else {})).eval()
    cfg, state = hf_to_duomind_state(config["model_type"], read_weights(path), config, _parse_dtype(dtype),
                                     where=str(path))
    with torch.device("meta"):  # no throwaway random init: the loaded tensors are assigned directly
        model = DuoMind(cfg)
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def convert_cli(src: str, dst: str, to: str | None = None, dtype: str | None = None,
                overwrite: bool = False) -> None:
    """Convert a Hugging Face checkpoint to DuoMind, or a DuoMind checkpoint back to Hugging Face.

    The direction comes from SRC's config.json: model_type "duomind" is exported, llama / mistral / qwen2 /
    qwen3 / gemma2 / mixtral / qwen3_moe are imported. Weights are mapped tensor by tensor over safetensors (no HF model is built).

    Args:
        src: Checkpoint directory holding config.json and model.safetensors (or sharded safetensors).
        dst: Output directory, written atomically; must not exist or be empty unless --overwrite.
        to: HF format for exporting a DuoMind checkpoint (llama, mistral, qwen2, qwen3, gemma2, mixtral,
            qwen3_moe); default: the format it was imported from, else the simplest that can express the model.
        dtype: Cast weights to float32, bfloat16 or float16; default keeps the source dtype.
        overwrite: Replace an existing non-empty DST.
    """
    try:
        report = convert_report(src, dst, to, dtype, overwrite)
    except ConversionError as err:
        raise SystemExit(f"duomind convert: error: {err}") from None
    print(f"converted {report.source_format} -> {report.target_format}: {report.num_parameters:,} parameters "
          f"({report.dtype})")
    print(f"wrote {report.dst}/: {', '.join(report.files)}")
