"""Dataclass configs and presets. No torch import here: the CLI, the simulator and recipes read configs cheaply.

`ModelConfig` describes every member of the DuoMind decoder family (see `duomind.model`); variants are
flags, not subclasses. Field names follow Hugging Face's Llama config where one exists, so converted
checkpoints read naturally.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

NORM_STYLES = ("pre", "sandwich", "dssn")
INITS = ("normal", "tiny")
ACTIVATIONS = ("silu", "gelu_tanh")
MLP_TYPES = ("dense", "moe", "moge")
ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A config field is unknown, missing or out of range; the message names the field and the fix."""


@dataclass
class ModelConfig:
    """One member of the DuoMind decoder family.

    Attributes:
        vocab_size: Rows of the embedding and the LM head.
        hidden_size: Residual stream width d.
        num_hidden_layers: Number of decoder blocks L.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (GQA); must divide the query heads.
        head_dim: Per-head width; defaults to hidden_size // num_attention_heads.
        intermediate_size: SwiGLU inner width; defaults to 8/3 d rounded up to a multiple of 16.
        max_position_embeddings: Longest sequence the model is meant for (the KV cache's default size).
        rope_base: RoPE base.
        rope_scale: Optional RoPE scaling, e.g. {"rope_type": "llama3", "factor": 8.0, ...} or
            {"rope_type": "linear", "factor": 2.0}.
        rms_norm_eps: RMSNorm epsilon.
        qkv_bias: Bias on q/k/v projections (Qwen2).
        o_bias: Bias on the attention output projection.
        mlp_bias: Bias on the MLP projections.
        qk_norm: Per-head RMSNorm on queries and keys before RoPE (Qwen3).
        tie_word_embeddings: Share the embedding matrix with the LM head.
        hidden_act: MLP gate activation, "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma).
        norm_style: "pre" (Llama), "sandwich" (Gemma 2: a second norm on each sub-layer output) or
            "dssn" (Pangu Ultra depth-scaled sandwich norm: the post-norm gain starts at c / sqrt(L)).
        init: "normal" (std init_std) or "tiny" (TinyInit: std sqrt(1 / (2 d L)), embeddings std 0.5).
        init_std: Standard deviation of the "normal" init.
        c_attn: DSSN post-norm gain constant of the attention sub-layer.
        c_mlp: DSSN post-norm gain constant of the MLP sub-layer.
        mlp_type: "dense" (SwiGLU), "moe" (softmax top-k over all experts; Mixtral, Qwen3-MoE) or "moge"
            (Mixture of Grouped Experts, Pangu Pro MoE, arXiv 2505.21411: the same number of experts from
            every group). See `duomind.moe`.
        num_experts: Routed experts N per MoE layer.
        num_experts_per_tok: Experts per token K (all groups together; MoGE takes K / expert_groups per group).
        expert_groups: Contiguous expert groups M, one per device under expert parallelism. MoGE routes
            within them; for "moe" they only place experts on devices (load metrics, expert parallelism).
        moe_intermediate_size: Width of each routed (and shared) expert; defaults to intermediate_size.
        num_shared_experts: Experts every token goes through (stored as one MLP of their summed width).
        norm_topk_prob: Renormalise the selected experts' weights to sum to 1 (Mixtral); MoGE never does.
        router_scale: Multiply each selected weight by a learned per-expert scale (initialised to 1).
        first_dense_layers: The first n layers keep a dense MLP (intermediate_size wide).
        router_aux_loss_coef: Weight of the batch-level balance loss added by the trainer (0 disables).
        router_bias_update_rate: Auxiliary-loss-free balancing (arXiv 2412.19437): a per-expert bias on the
            selection scores, moved by this much per step towards even loads (0 disables; no bias tensor).
        scale_embeddings: Multiply embeddings by sqrt(d) (Gemma).
        attn_scale: Attention logit scale; defaults to head_dim ** -0.5.
        attn_softcap: tanh soft-capping of attention logits (Gemma 2); None disables.
        final_softcap: tanh soft-capping of the output logits (Gemma 2); None disables.
        attention_window: Sliding-window size for the layers in `window_layers`; None disables.
        window_layers: Indices of the layers that use the sliding window (None: all, when a window is set).
        bos_token_id: Beginning-of-sequence token id, if the tokenizer has one.
        eos_token_id: End-of-sequence token id(s).
        pad_token_id: Padding token id.
    """

    vocab_size: int = 320
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 2048
    rope_base: float = 10000.0
    rope_scale: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    norm_style: str = "pre"
    init: str = "normal"
    init_std: float = 0.02
    c_attn: float = 0.283
    c_mlp: float = 0.432
    mlp_type: str = "dense"
    num_experts: int = 8
    num_experts_per_tok: int = 2
    expert_groups: int = 1
    moe_intermediate_size: int | None = None
    num_shared_experts: int = 0
    norm_topk_prob: bool = False
    router_scale: bool = False
    first_dense_layers: int = 0
    router_aux_loss_coef: float = 1e-3
    router_bias_update_rate: float = 0.0
    scale_embeddings: bool = False
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    attention_window: int | None = None
    window_layers: list[int] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly or change one of them."
                )
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        if self.intermediate_size is None:
            self.intermediate_size = 16 * math.ceil(8 * self.hidden_size / 3 / 16)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if self.window_layers is not None:
            self.window_layers = [int(i) for i in self.window_layers]
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first inconsistent field and how to fix it."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
                f"{self.num_attention_heads} (grouped-query attention shares each KV head across a group)."
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings.")
        for name, allowed in (("norm_style", NORM_STYLES), ("init", INITS), ("hidden_act", ACTIVATIONS),
                              ("mlp_type", MLP_TYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}.")
        if self.rope_scale is not None:
            kind = self.rope_scale.get("rope_type", self.rope_scale.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ConfigError(f"rope_scale type {kind!r} is not supported; supported: {list(ROPE_TYPES)}.")
        if self.rms_norm_eps <= 0 or self.init_std <= 0 or self.rope_base <= 0:
            raise ConfigError("rms_norm_eps, init_std and rope_base must be positive.")
        if self.window_layers is not None:
            bad = [i for i in self.window_layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ConfigError(f"window_layers {bad} are outside 0..{self.num_hidden_layers - 1}.")
        if self.attention_window is not None and self.attention_window <= 0:
            raise ConfigError(f"attention_window must be positive, got {self.attention_window}.")
        if self.mlp_type != "dense":
            self._validate_moe()

    def _validate_moe(self) -> None:
        for name in ("num_experts", "num_experts_per_tok", "expert_groups", "moe_intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        n, k, m = self.num_experts, self.num_experts_per_tok, self.expert_groups
        if n % m:
            raise ConfigError(f"num_experts={n} is not divisible by expert_groups={m}: every group (one per "
                              f"device) must hold the same number of experts; choose num_experts a multiple of {m}.")
        if self.mlp_type == "moge":
            if k % m:
                raise ConfigError(f"MoGE takes the same number of experts from each of the {m} groups, so "
                                  f"num_experts_per_tok={k} must be a multiple of expert_groups={m} "
                                  f"(e.g. {m * max(k // m, 1)}).")
            if k // m > n // m:
                raise ConfigError(f"MoGE would take K'={k // m} experts per group (num_experts_per_tok={k} over "
                                  f"{m} groups) but each group holds only {n // m}; lower num_experts_per_tok "
                                  "or raise num_experts.")
            if self.norm_topk_prob:
                raise ConfigError("MoGE does not renormalise the selected weights (arXiv 2505.21411); set "
                                  "norm_topk_prob=False or use mlp_type='moe'.")
        if k > n:
            raise ConfigError(f"num_experts_per_tok={k} exceeds num_experts={n}; a token cannot pick more "
                              "experts than exist.")
        if not 0 <= self.first_dense_layers <= self.num_hidden_layers:
            raise ConfigError(f"first_dense_layers={self.first_dense_layers} must lie in 0..{self.num_hidden_layers}.")
        if self.num_shared_experts < 0:
            raise ConfigError(f"num_shared_experts must be >= 0, got {self.num_shared_experts}.")
        if self.router_aux_loss_coef < 0 or self.router_bias_update_rate < 0:
            raise ConfigError("router_aux_loss_coef and router_bias_update_rate must be >= 0.")

    @property
    def experts_per_group(self) -> int:
        """K': experts each token takes from every group (MoGE); K for plain MoE."""
        return self.num_experts_per_tok // self.expert_groups if self.mlp_type == "moge" else self.num_experts_per_tok

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether block `layer_idx` has a routed-expert MLP."""
        return self.mlp_type != "dense" and layer_idx >= self.first_dense_layers

    # --- derived sizes ---
    @property
    def uses_window(self) -> list[bool]:
        """Per layer: whether it attends through the sliding window."""
        if self.attention_window is None:
            return [False] * self.num_hidden_layers
        chosen = set(range(self.num_hidden_layers) if self.window_layers is None else self.window_layers)
        return [i in chosen for i in range(self.num_hidden_layers)]

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count computed from the config alone (matches the built model)."""
        d, h, kv, hd, f = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads,
                           self.head_dim, self.intermediate_size)
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        attn += (h * hd + 2 * kv * hd) * self.qkv_bias + d * self.o_bias + 2 * hd * self.qk_norm
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        norms = d * (4 if self.norm_style != "pre" else 2)
        total = self.num_hidden_layers * (attn + norms) + d
        total += sum(self._mlp_parameters(i, active=False) if self.is_moe_layer(i) else mlp
                     for i in range(self.num_hidden_layers))
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return total

    def num_active_parameters(self, include_embeddings: bool = True) -> int:
        """Parameters one token uses: the router, its K routed experts and the shared experts per MoE layer."""
        moe = sum(self._mlp_parameters(i, active=False) - self._mlp_parameters(i, active=True)
                  for i in range(self.num_hidden_layers) if self.is_moe_layer(i))
        return self.num_parameters(include_embeddings) - moe

    def _mlp_parameters(self, layer_idx: int, active: bool) -> int:
        d, fe, n = self.hidden_size, self.moe_intermediate_size, self.num_experts
        routed = (self.num_experts_per_tok if active else n) * 3 * d * fe
        return n * d + n * self.router_scale + routed + self.num_shared_experts * 3 * d * fe

    # --- I/O ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> ModelConfig:
        return from_dict(cls, data, where)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}.")
        return from_dict(cls, {**PRESETS[name], **overrides}, f"preset {name!r}")


# Named sizes. "tiny" is what tests use; "demo" trains in minutes here; "base-20m" is bench-base.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "demo": dict(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=384, max_position_embeddings=512,
                 tie_word_embeddings=True),
    "base-20m": dict(vocab_size=2048, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                     num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=1024),
    # Small MoGE for tests and recipes: 8 experts in 4 groups, one per group per token (K' = 1, K = 4).
    "tiny-moge": dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, mlp_type="moge", num_experts=8, num_experts_per_tok=4,
                      expert_groups=4, moe_intermediate_size=64),
    # Pangu Pro MoE (arXiv 2505.21411): 64 experts in 8 groups, K' = 1, 4 shared experts of width 1344;
    # 72B parameters, 16B active. Build it on the meta device; it is here for sizes and the simulator.
    "pangu-pro-moe": dict(vocab_size=153376, hidden_size=5120, num_hidden_layers=48, num_attention_heads=40,
                          num_key_value_heads=8, head_dim=128, intermediate_size=1344, mlp_type="moge",
                          num_experts=64, num_experts_per_tok=8, expert_groups=8, moe_intermediate_size=1344,
                          num_shared_experts=4, router_scale=True, max_position_embeddings=131072),
}

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown fields with a did-you-mean hint."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{where}: unknown field(s) {', '.join(hints)}. Known fields: {sorted(names)}.")
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        want = _scalar_types(hints[k])
        if want is not None and (not isinstance(v, want) or isinstance(v, bool) and bool not in want):
            names = " or ".join(sorted("null" if t is type(None) else t.__name__ for t in want))
            raise ConfigError(f"{where}: field {k!r} must be {names}, got {type(v).__name__} {v!r}"
                              + ("; write true/false unquoted." if bool in want else "."))
    try:
        return cls(**data)
    except TypeError as err:  # missing fields surface here
        raise ConfigError(f"{where}: {err}") from err


def _scalar_types(hint: Any) -> tuple[type, ...] | None:
    """The types a field of hint `hint` accepts when it is a plain scalar (bool, int, float, str, optionally None);
    None for anything richer (lists, mappings, literals), which the dataclass checks itself.

    Why: YAML `"false"` is a non-empty string, so an unchecked boolean field would read it as true."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not all(a in (bool, int, float, str, type(None)) for a in args):
        return None
    accepted = set(args)
    if float in accepted:
        accepted.add(int)  # 1 is a fine float
    return tuple(accepted)


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict with clear errors for missing, empty or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the path.")
    text = path.read_text()
    if not text.strip():
        raise ConfigError(f"config file {str(path)!r} is empty; write the fields as YAML mapping.")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of fields, got {type(data).__name__}.")
    return data


TRAIN_MODES = ("pretrain", "sft", "kd")
PRECISIONS = ("auto", "fp32", "bf16-mixed")
PACKINGS = ("concat", "best_fit")  # pre-training windows: duomind.train.data.build_examples


@dataclass
class TrainConfig:
    """One training run: pre-training, SFT (loss on assistant tokens only) or knowledge distillation.

    Attributes:
        out_dir: Run directory: checkpoints, metrics.jsonl, loss.png. An existing run there is resumed.
        mode: "pretrain" (text), "sft" (chat records, loss on assistant tokens) or "kd" (SFT data plus
            forward KL to a teacher's logits; on plain text, packed windows with the KL on every token).
        data: Training data: a .txt file (one document per line) or .jsonl ({"text"} or chat {"messages"}).
        eval_data: Optional held-out data in the same format, for eval loss.
        tokenizer: Tokenizer directory; defaults to the tokenizer saved with `init_from`.
        model_preset: Named model size from duomind.config.PRESETS (ignored with `init_from`).
        model: ModelConfig field overrides, e.g. {norm_style: dssn, init: tiny}. vocab_size defaults to the
            tokenizer's size.
        init_from: Checkpoint directory to start from (SFT, KD, continued pre-training).
        teacher: Teacher checkpoint directory (mode kd).
        kd_temperature: Softmax temperature of the distillation loss.
        kd_alpha: Weight of the KL term; (1 - kd_alpha) weights the usual cross-entropy.
        seq_len: Tokens per training sequence (longer examples are truncated).
        packing: How plain text fills seq_len windows: "concat" (the document stream cut into full windows;
            documents that cross an edge are split) or "best_fit" (whole documents, best-fit decreasing; windows
            right-padded). SFT/KD chats are one per sequence either way.
        global_batch_size: Sequences per optimizer step, over all processes.
        micro_batch_size: Sequences per forward pass per process (gradient accumulation fills the rest).
        max_steps: Optimizer steps of the whole run (the LR schedule spans them).
        stop_at: Stop early after this many steps (the schedule still spans max_steps); resume continues.
        lr: Peak learning rate.
        min_lr: Final learning rate of the cosine decay.
        warmup_steps: Linear warmup steps.
        weight_decay: AdamW weight decay (not applied to norms, biases, embeddings).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: Max global gradient norm (0 disables).
        precision: "auto" (bf16-mixed on CUDA, fp32 on CPU), "fp32" or "bf16-mixed".
        seed: Seed for initialisation and data order.
        log_every: Steps between metric lines.
        eval_every: Steps between evaluations (0: only at the end, when eval_data is set).
        eval_batches: Micro-batches per evaluation.
        save_every: Steps between checkpoints (the final step is always saved).
        keep_last: Complete checkpoints to keep.
        threads: torch intra-op threads (None: torch's default).
        progress: Show a progress bar.
    """

    out_dir: str = "runs/train"
    mode: str = "pretrain"
    data: str = "data/corpus.txt"
    eval_data: str | None = None
    tokenizer: str | None = None
    model_preset: str = "tiny"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None
    teacher: str | None = None
    kd_temperature: float = 1.0
    kd_alpha: float = 1.0
    seq_len: int = 256
    packing: str = "concat"
    global_batch_size: int = 16
    micro_batch_size: int = 16
    max_steps: int = 500
    stop_at: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    save_every: int = 100
    keep_last: int = 2
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"mode={self.mode!r} is not one of {list(TRAIN_MODES)}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r} is not one of {list(PRECISIONS)}.")
        if self.packing not in PACKINGS:
            raise ConfigError(f"packing={self.packing!r} is not one of {list(PACKINGS)}.")
        if self.mode == "kd" and not self.teacher:
            raise ConfigError("mode='kd' needs a teacher checkpoint: set teacher: path/to/checkpoint.")
        for name in ("seq_len", "global_batch_size", "micro_batch_size", "max_steps", "save_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"global_batch_size={self.global_batch_size} must be a multiple of "
                              f"micro_batch_size={self.micro_batch_size}.")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise ConfigError("kd_alpha must lie in [0, 1] and kd_temperature must be positive.")
        if self.model_preset not in PRESETS:
            raise ConfigError(f"model_preset={self.model_preset!r} is unknown; known presets: {sorted(PRESETS)}.")
        ModelConfig.from_preset(self.model_preset, **self.model)  # unknown or inconsistent model fields fail now
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0; got lr={self.lr}, min_lr={self.min_lr}.")
