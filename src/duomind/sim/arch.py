"""The simulator's view of a model architecture: shapes only, no weights, no torch.

Covers dense, MoE (softmax top-k) and MoGE (grouped top-k', arXiv 2505.21411) feed-forwards, GQA and MLA
attention (DeepSeek-V2 style, used by Pangu Ultra MoE, arXiv 2505.04519), leading dense layers, shared
experts and multi-token-prediction layers. Reads our own YAML/JSON, DuoMind `config.json` and the Hugging
Face `config.json` of Llama / Mistral / Qwen2 / Qwen3 / Mixtral / Qwen2-MoE / Qwen3-MoE / DeepSeek-V2/V3.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MLP_KINDS = ("dense", "moe", "moge")
ATTENTION_KINDS = ("gqa", "mla")


class ArchError(ValueError):
    """A model description is inconsistent or cannot be read."""


@dataclass(frozen=True)
class Arch:
    """Model shapes.

    Attributes:
        name: Label for reports.
        vocab_size: Vocabulary rows.
        hidden_size: Residual width d.
        num_layers: Decoder blocks.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (GQA; ignored for MLA, which caches a latent).
        head_dim: Per-head width (GQA); defaults to d / heads.
        intermediate_size: Dense SwiGLU inner width (dense model, or the leading dense layers of an MoE).
        gated_mlp: SwiGLU (three matrices) or a plain two-matrix GELU MLP (GPT-3).
        tie_embeddings: Share embedding and LM head.
        attention: "gqa" or "mla".
        q_lora_rank: MLA query low-rank (0: full-rank query projection).
        kv_lora_rank: MLA compressed KV width (what the cache holds, with the rope part).
        qk_nope_head_dim: MLA per-head non-rotary query/key width.
        qk_rope_head_dim: MLA per-head rotary width (the key's rope part is shared across heads).
        v_head_dim: MLA per-head value width.
        mlp: "dense", "moe" or "moge".
        num_experts: Routed experts N.
        top_k: Experts per token K (MoGE: K = groups * K').
        num_groups: MoGE groups M (experts split into M contiguous groups, K' = K / M from each).
        expert_size: Routed expert SwiGLU inner width.
        num_shared_experts: Always-on experts.
        shared_expert_size: Inner width of one shared expert (defaults to expert_size).
        first_dense_layers: Leading layers with a dense FFN in an MoE model.
        mtp_layers: Multi-token-prediction blocks (trained, not used for plain decoding).
    """

    name: str = "custom"
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 0
    intermediate_size: int = 0
    gated_mlp: bool = True
    tie_embeddings: bool = False
    attention: str = "gqa"
    q_lora_rank: int = 0
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    mlp: str = "dense"
    num_experts: int = 0
    top_k: int = 0
    num_groups: int = 1
    expert_size: int = 0
    num_shared_experts: int = 0
    shared_expert_size: int = 0
    first_dense_layers: int = 0
    mtp_layers: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_heads, 1))
        if not self.intermediate_size:
            object.__setattr__(self, "intermediate_size", 16 * -(-8 * self.hidden_size // 3 // 16))
        if self.num_shared_experts and not self.shared_expert_size:
            object.__setattr__(self, "shared_expert_size", self.expert_size)
        self.check()

    def check(self) -> None:
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ArchError(f"{f} must be a positive integer, got {v!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ArchError(f"attention={self.attention!r} is not one of {ATTENTION_KINDS}")
        if self.mlp not in MLP_KINDS:
            raise ArchError(f"mlp={self.mlp!r} is not one of {MLP_KINDS}")
        if self.attention == "gqa" and (self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads):
            raise ArchError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.mlp != "dense":
            if self.num_experts <= 0 or not 0 < self.top_k <= self.num_experts or self.expert_size <= 0:
                raise ArchError("an MoE/MoGE model needs num_experts > 0, 0 < top_k <= num_experts, expert_size > 0")
            if not 0 <= self.first_dense_layers < self.num_layers:
                raise ArchError(f"first_dense_layers={self.first_dense_layers} must be below num_layers")
        if self.mlp == "moge":
            m = self.num_groups
            if m <= 1 or self.num_experts % m or self.top_k % m:
                raise ArchError(f"MoGE needs num_groups > 1 dividing num_experts={self.num_experts} and "
                                f"top_k={self.top_k} (each token takes top_k / num_groups experts per group)")

    # --- derived ---
    @property
    def moe_layers(self) -> int:
        return 0 if self.mlp == "dense" else self.num_layers - self.first_dense_layers

    @property
    def dense_layers(self) -> int:
        return self.num_layers - self.moe_layers

    def attn_params(self) -> int:
        d, h = self.hidden_size, self.num_heads
        if self.attention == "gqa":
            return d * h * self.head_dim * 2 + 2 * d * self.num_kv_heads * self.head_dim
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        q = d * self.q_lora_rank + self.q_lora_rank * h * qk if self.q_lora_rank else d * h * qk
        kv = d * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv += self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + h * self.v_head_dim * d

    def params(self) -> dict[str, float]:
        return dict(_params(self))

    def _count(self) -> dict[str, float]:
        """Parameter counts: total and active per token (MTP blocks included; "mtp" says how many are theirs),
        embeddings (input + output), attention, routed experts."""
        d = self.hidden_size
        attn = self.attn_params() + 2 * d  # + the two norms
        dense_ffn = (3 if self.gated_mlp else 2) * d * self.intermediate_size
        expert = 3 * d * self.expert_size
        shared = self.num_shared_experts * 3 * d * self.shared_expert_size
        router = d * self.num_experts
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        moe_total = self.num_experts * expert + shared + router
        moe_active = self.top_k * expert + shared + router
        layers_total = self.num_layers * attn + self.dense_layers * dense_ffn + self.moe_layers * moe_total
        layers_active = self.num_layers * attn + self.dense_layers * dense_ffn + self.moe_layers * moe_active
        # An MTP block = one decoder block (of the last layer's kind) + a projection 2d -> d; shares the head.
        mtp_block = attn + (moe_total if self.moe_layers else dense_ffn) + 2 * d * d
        mtp_active = attn + (moe_active if self.moe_layers else dense_ffn) + 2 * d * d
        return {"total": layers_total + embed + d + self.mtp_layers * mtp_block,
                "active": layers_active + embed + d + self.mtp_layers * mtp_active,
                "embedding": embed, "attention": self.num_layers * attn,
                "experts": self.moe_layers * self.num_experts * expert, "mtp": self.mtp_layers * mtp_block}

    def kv_bytes_per_token(self, kv_dtype_bytes: float) -> float:
        """KV cache per token over all layers (MLA caches the latent plus the shared rope key)."""
        if self.attention == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_kv_heads * self.head_dim
        return self.num_layers * per_layer * kv_dtype_bytes

    def replace(self, **changes: Any) -> Arch:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@lru_cache(maxsize=4096)
def _params(arch: Arch) -> dict[str, float]:
    return arch._count()


def from_hf_config(cfg: dict[str, Any], name: str = "hf") -> Arch:
    """Map a Hugging Face (or DuoMind) `config.json` onto `Arch`.

    Field names follow the Llama / Qwen / Mixtral / Qwen-MoE / DeepSeek-V2/V3 configs in `transformers`.
    """
    g = cfg.get
    mt = str(g("model_type", "")).lower()
    heads = g("num_attention_heads")
    a: dict[str, Any] = dict(
        name=name, vocab_size=g("vocab_size"), hidden_size=g("hidden_size"), num_layers=g("num_hidden_layers"),
        num_heads=heads, num_kv_heads=g("num_key_value_heads") or heads, head_dim=g("head_dim") or 0,
        intermediate_size=g("intermediate_size") or 0, tie_embeddings=bool(g("tie_word_embeddings", False)))
    if mt.startswith("deepseek") or g("kv_lora_rank"):
        a.update(attention="mla", q_lora_rank=g("q_lora_rank") or 0, kv_lora_rank=g("kv_lora_rank"),
                 qk_nope_head_dim=g("qk_nope_head_dim"), qk_rope_head_dim=g("qk_rope_head_dim"),
                 v_head_dim=g("v_head_dim"), head_dim=g("qk_nope_head_dim", 0) + g("qk_rope_head_dim", 0))
        if g("n_routed_experts"):
            a.update(mlp="moe", num_experts=g("n_routed_experts"), top_k=g("num_experts_per_tok"),
                     expert_size=g("moe_intermediate_size"), num_shared_experts=g("n_shared_experts") or 0,
                     first_dense_layers=g("first_k_dense_replace") or 0, mtp_layers=g("num_nextn_predict_layers") or 0)
    elif g("num_local_experts"):  # Mixtral
        a.update(mlp="moe", num_experts=g("num_local_experts"), top_k=g("num_experts_per_tok"),
                 expert_size=g("intermediate_size"))
    elif g("num_experts") and (g("moe_intermediate_size") or g("expert_size")):  # Qwen-MoE, DuoMind MoE/MoGE
        groups = g("num_groups") or g("num_expert_groups") or g("n_group") or 1
        kind = g("mlp_type") if g("mlp_type") in MLP_KINDS else ("moge" if groups > 1 else "moe")
        shared = g("num_shared_experts") or (1 if g("shared_expert_intermediate_size") else 0)
        a.update(mlp=kind, num_experts=g("num_experts"), top_k=g("num_experts_per_tok") or g("top_k"),
                 num_groups=groups, expert_size=g("moe_intermediate_size") or g("expert_size"),
                 num_shared_experts=shared, shared_expert_size=g("shared_expert_intermediate_size") or 0,
                 first_dense_layers=len(g("mlp_only_layers") or []) or g("first_dense_layers") or 0)
    missing = [k for k in ("vocab_size", "hidden_size", "num_layers", "num_heads") if not a.get(k)]
    if missing:
        raise ArchError(f"{name}: config.json lacks {missing} (expected Hugging Face field names such as "
                        "hidden_size, num_hidden_layers, num_attention_heads, vocab_size)")
    return Arch(**a)


def load_arch(spec: str | Path | dict[str, Any] | Arch) -> Arch:
    """An `Arch` from a preset name, a YAML/JSON file of `Arch` fields, or a DuoMind / HF `config.json`.

    A directory is read as a checkpoint directory (its `config.json`).
    """
    from duomind.sim.presets import MODELS

    if isinstance(spec, Arch):
        return spec
    if isinstance(spec, dict):
        return _from_mapping(spec, "model")
    key = str(spec)
    if key in MODELS:
        return MODELS[key]
    path = Path(key)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ArchError(f"unknown model {key!r}: not a preset ({', '.join(sorted(MODELS))}) nor a file.")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    else:
        from duomind.config import load_mapping

        data = load_mapping(path)
    return _from_mapping(data, path.stem if path.name != "config.json" else path.parent.name)


def _from_mapping(data: dict[str, Any], name: str) -> Arch:
    if "num_hidden_layers" in data or "model_type" in data or "architectures" in data:
        return from_hf_config(data, name)
    known = {f.name for f in dataclasses.fields(Arch)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ArchError(f"model file: unknown field(s) {unknown}; known: {sorted(known)}")
    return Arch(**{"name": name, **data})
