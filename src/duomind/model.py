"""The DuoMind decoder family: one implementation, variants as `ModelConfig` flags.

One block, three norm layouts (`norm_style`)::

    pre       h = h + Attn(N1(h))                 h = h + MLP(N2(h))            Llama, Qwen, Mistral
    sandwich  h = h + P1(Attn(N1(h)))             h = h + P2(MLP(N2(h)))        Gemma 2
    dssn      sandwich, with the gains of P1 / P2 initialised to c_attn / sqrt(L) and c_mlp / sqrt(L)
              (depth-scaled sandwich norm, Pangu Ultra, arXiv 2504.07866)

    N = pre-norm (RMSNorm), P = post-norm on the sub-layer output inside the residual branch.
    Attn: GQA with RoPE, optional qkv bias (Qwen2), per-head qk-norm (Qwen3), logit soft-capping and
    sliding windows (Gemma 2).

One MLP slot, three kinds (`mlp_type`; the first `first_dense_layers` blocks stay dense)::

    dense     down(act(gate(x)) * up(x))                                        Llama ... Gemma 2
    moe       sum over the top-K of N experts of w_e * expert_e(x) (+ shared)   Mixtral, Qwen3-MoE
    moge      the same with K' = K / M experts from each of M groups            Pangu Pro MoE (arXiv 2505.21411)

    (routers, stacked experts, dispatch and load metrics live in `duomind.moe`)

`DuoMind` is a `transformers.PreTrainedModel` registered with AutoConfig / AutoModelForCausalLM under
model_type "duomind", so checkpoints load with `from_pretrained` and HF `generate` works. The fast path is
`duomind.generate`, which drives the same forward with the pre-allocated `KVCache` below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.modeling_outputs import CausalLMOutputWithPast, MoeCausalLMOutputWithPast

from duomind.config import ConfigError, ModelConfig
from duomind.moe import Experts, MoELayer, TopKRouter, model_aux_loss

_MODEL_FIELDS = [f for f in ModelConfig.__dataclass_fields__]
# Keys that Hugging Face itself writes into config.json; everything else must be a ModelConfig field.
_HF_KEYS = {"transformers_version", "architectures", "auto_map", "model_type", "dtype", "torch_dtype", "use_cache",
            "output_hidden_states", "return_dict", "name_or_path", "_name_or_path"}


class DuoMindConfig(PreTrainedConfig):
    """Hugging Face view of a `ModelConfig` (same fields), so `AutoConfig` and `from_pretrained` work."""

    model_type = "duomind"

    def __post_init__(self, **kwargs: Any) -> None:
        known = {k: kwargs.pop(k) for k in list(kwargs) if k in _MODEL_FIELDS}
        unknown = [k for k in kwargs if k not in _HF_KEYS and not k.startswith("_")]
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
            if name not in known and getattr(self, name, None) is not None:
                known[name] = getattr(self, name)
        cfg = ModelConfig.from_dict(known, "DuoMind config.json")  # validates, fills defaults
        if unknown:
            raise ConfigError(f"DuoMind config.json has unknown field(s) {unknown}; remove them or check spelling.")
        for name in _MODEL_FIELDS:
            setattr(self, name, getattr(cfg, name))
        super().__post_init__(**kwargs)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> DuoMindConfig:
        return cls(**cfg.to_dict())

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in _MODEL_FIELDS})


class KVCache:
    """Pre-allocated key/value buffers for all layers, truncatable to any length.

    Shapes: keys and values are (L, B, H_kv, S_max, D). Sequences of different lengths share one cache by
    left padding; the caller passes the matching 2-D attention mask. `truncate(n)` rolls the cache back
    to its first n positions (speculative decoding rejects drafts this way). The `update` /
    `get_seq_length` methods follow the Hugging Face `Cache` protocol, so one forward serves both.
    """

    def __init__(self, config: ModelConfig | DuoMindConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.max_len = max_len

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed but the cache holds {self.max_len}; "
                             "allocate a larger cache (max_len) or generate fewer tokens.")
        self.k[layer_idx, :, :, self.length:end] = k
        self.v[layer_idx, :, :, self.length:end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}.")
        self.length = n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder batch rows (e.g. drop finished sequences)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


class RMSNorm(nn.Module):
    """RMSNorm computed in float32. `init_value` is the gain at initialisation (DSSN sets c / sqrt(L))."""

    def __init__(self, dim: int, eps: float, init_value: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 == self.weight.dtype:  # same math, three fewer ops per call when decoding
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_inv_freq(cfg: ModelConfig | DuoMindConfig, device: torch.device | None = None) -> torch.Tensor:
    """Inverse RoPE frequencies, with optional linear or Llama-3 scaling."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    scaling = cfg.rope_scale or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > old_ctx / lo, inv / factor, torch.where(wavelen < old_ctx / hi, inv, blended))
    return inv


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig | DuoMindConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else self.head_dim**-0.5
        self.softcap = cfg.attn_softcap

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: Any | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = _rotate(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
        k = _rotate(k.transpose(1, 2), cos, sin)  # (B, Hkv, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, S, D)
        causal = mask is None and T > 1  # no cache, no padding: the fused causal kernel
        if self.softcap is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale,
                                               enable_gqa=self.n_kv != self.n_head)
        else:
            y = self._softcapped(q, k, v, mask, causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def _softcapped(self, q, k, v, mask, causal):
        # SDPA cannot soft-cap logits, so Gemma-2-style layers take the explicit path.
        rep = self.n_head // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if causal:
            T, S = scores.shape[-2:]
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig | DuoMindConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        d, f = cfg.hidden_size, intermediate_size or cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(d, f, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(f, d, bias=cfg.mlp_bias)
        self.act = F.silu if cfg.hidden_act == "silu" else (lambda t: F.gelu(t, approximate="tanh"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def build_mlp(cfg: ModelConfig | DuoMindConfig, layer_idx: int = 0) -> nn.Module:
    """The MLP seam: `mlp_type` selects the feed-forward of every block (the first layers may stay dense)."""
    if cfg.mlp_type == "dense" or layer_idx < cfg.first_dense_layers:
        return MLP(cfg)
    if cfg.mlp_type in ("moe", "moge"):
        if cfg.mlp_bias:
            raise ConfigError("mlp_bias=True is not supported with MoE layers; set mlp_bias=False.")
        shared = MLP(cfg, cfg.num_shared_experts * cfg.moe_intermediate_size) if cfg.num_shared_experts else None
        return MoELayer.from_config(cfg, shared=shared)
    raise ConfigError(f"mlp_type={cfg.mlp_type!r} is not available in this build.")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig | DuoMindConfig, layer_idx: int) -> None:
        super().__init__()
        eps, d = cfg.rms_norm_eps, cfg.hidden_size
        self.attn_norm = RMSNorm(d, eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = build_mlp(cfg, layer_idx)
        self.sandwich = cfg.norm_style != "pre"
        if self.sandwich:
            depth = math.sqrt(cfg.num_hidden_layers) if cfg.norm_style == "dssn" else None
            self.attn_post_norm = RMSNorm(d, eps, cfg.c_attn / depth if depth else 1.0)
            self.mlp_post_norm = RMSNorm(d, eps, cfg.c_mlp / depth if depth else 1.0)

    def forward(self, h, cos, sin, mask, cache):
        a = self.attn(self.attn_norm(h), cos, sin, mask, cache)
        h = h + (self.attn_post_norm(a) if self.sandwich else a)
        m = self.mlp(self.mlp_norm(h))
        return h + (self.mlp_post_norm(m) if self.sandwich else m)


class DuoMind(PreTrainedModel, GenerationMixin):
    """The DuoMind causal LM (see the module docstring for the block layouts)."""

    config_class = DuoMindConfig
    base_model_prefix = "duomind"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}

    def __init__(self, config: DuoMindConfig | ModelConfig) -> None:
        if isinstance(config, ModelConfig):
            config = DuoMindConfig.from_model_config(config)
        super().__init__(config)
        cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.embed_scale = math.sqrt(cfg.hidden_size) if cfg.scale_embeddings else None
        self.windows = [cfg.attention_window if w else None for w in cfg.to_model_config().uses_window]
        self._rope: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None
        self.post_init()

    @property
    def model_config(self) -> ModelConfig:
        return self.config.to_model_config()

    # --- init (Pangu Ultra TinyInit / normal) ---
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        cfg = self.config
        tiny = cfg.init == "tiny"
        std = math.sqrt(1.0 / (2 * cfg.hidden_size * cfg.num_hidden_layers)) if tiny else cfg.init_std
        if isinstance(module, nn.Linear):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            hf_init.normal_(module.weight, mean=0.0, std=0.5 if tiny else cfg.init_std)
        elif isinstance(module, RMSNorm):
            hf_init.constant_(module.weight, module.init_value)
        elif isinstance(module, Experts):
            hf_init.normal_(module.gate_up_proj, mean=0.0, std=std)
            hf_init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, TopKRouter):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.expert_scale is not None:
                hf_init.ones_(module.expert_scale)
            if module.expert_bias is not None:
                hf_init.zeros_(module.expert_bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # --- forward ---
    def _rope_table(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # A plain attribute, not a buffer: buffers are left unset when HF initialises on the meta device.
        if self._rope is None or self._rope[0] != device or self._rope[1].shape[0] < n:
            size = max(n, self.config.max_position_embeddings)
            freqs = torch.outer(torch.arange(size, device=device, dtype=torch.float32), rope_inv_freq(self.config, device))
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope = (device, emb.cos(), emb.sin())
        return self._rope[1], self._rope[2]

    @staticmethod
    def _mask(attention_mask, T, S, past, window, device):
        """Boolean (B|1, 1, T, S) mask of allowed keys, or None where SDPA needs none."""
        if attention_mask is None and window is None and (past == 0 or T == 1):
            return None  # plain causal prefill (is_causal) or single-token decode over all keys
        q = torch.arange(past, past + T, device=device)[:, None]
        k = torch.arange(S, device=device)[None, :]
        allowed = k <= q
        if window is not None:
            allowed = allowed & (q - k < window)
        allowed = allowed[None]
        if attention_mask is not None:
            # A fully padded query row would give NaN; letting it see itself keeps it finite (it is ignored).
            allowed = (allowed & attention_mask[:, None, :S].bool()) | (k == q)[None]
        return allowed[:, None]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward.

        Args:
            input_ids: (B, T) token ids (or `inputs_embeds` (B, T, d)).
            attention_mask: (B, S) with 1 for real tokens over past + current positions (left padding).
            position_ids: (B, T); derived from the mask (or the cache length) when omitted.
            cache: a `KVCache` or any Hugging Face `Cache`; `past_key_values` is accepted as an alias.
            labels: (B, T) targets; the loss is next-token cross-entropy ignoring -100.
            logits_to_keep: compute logits only for the last n positions (0 = all).
            output_hidden_states: also return the residual stream after the embedding and every block.
        """
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if self.embed_scale is not None:
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        B, T, _ = h.shape
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.shape[-1] < past + T:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds "
                             f"{past} and the input adds {T}; pass a mask over past + current tokens.")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask[:, : past + T].long().cumsum(-1) - 1).clamp_min(0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=h.device)[None]  # broadcasts over the batch
        cos_t, sin_t = self._rope_table(int(position_ids.max()) + 1, h.device)
        cos = cos_t[position_ids].to(h.dtype)[:, None]  # (B, 1, T, D)
        sin = sin_t[position_ids].to(h.dtype)[:, None]
        masks: dict[int | None, torch.Tensor | None] = {}
        hidden = [h] if output_hidden_states else None
        for layer, window in zip(self.layers, self.windows):
            if window not in masks:
                masks[window] = self._mask(attention_mask, T, past + T, past, window, h.device)
            h = layer(h, cos, sin, masks[window], cache)
            if hidden is not None:
                hidden.append(h)
        if isinstance(cache, KVCache):
            cache.advance(T)
        h = self.norm(h)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        if self.config.final_softcap is not None:
            logits = torch.tanh(logits / self.config.final_softcap) * self.config.final_softcap
        loss = None
        if labels is not None:
            # shift the labels, not the logits: slicing (B, T, V) logits would copy them
            target = F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)
        hidden_states = tuple(hidden) if hidden is not None else None
        if self.config.mlp_type == "dense":
            return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache, hidden_states=hidden_states)
        # MoE: the balance loss of this forward (training mode only), added to the LM loss as HF does
        aux = model_aux_loss(self) if self.training else None
        if loss is not None and aux is not None and self.config.router_aux_loss_coef:
            loss = loss + self.config.router_aux_loss_coef * aux
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux, logits=logits, cache=cache,
                                         hidden_states=hidden_states)


AutoConfig.register("duomind", DuoMindConfig, exist_ok=True)
AutoModelForCausalLM.register(DuoMindConfig, DuoMind, exist_ok=True)
