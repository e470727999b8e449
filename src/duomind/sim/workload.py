"""Workload model: FLOPs and bytes of every operator of a decoder block, per device.

Bottom-up as in the Pangu Ultra MoE simulator (arXiv 2505.04519, sec. "Simulation"): a block is a list
of operators (matmuls, attention core, element-wise kernels), each with forward FLOPs, bytes moved and
kernel launches on ONE device after tensor/expert parallel splits; `simulate` turns them into time on a
hardware profile and adds communication. Backward costs follow from the forward by operator kind.

Two kernel styles: fused (Megatron / MindSpeed: one kernel per norm, activation, rotary) and eager
(PyTorch eager as DuoMind's `model.py` runs it: an RMSNorm is 9 calls, a rotary embedding 8 per tensor, a
module call costs about one small op; the launch counts below are read off that code).
"""

from __future__ import annotations

from dataclasses import dataclass

from duomind.sim.arch import Arch

# Backward / forward work ratios by operator kind: a matmul needs two (dgrad, wgrad); element-wise kernels
# read and write ~2x. Fused attention's ratio is a hardware-profile number (`Hardware.attn_bwd`).
BWD = {"matmul": 2.0, "elem": 2.0}
BWD_LAUNCHES = {"matmul": 2.0, "attn": 1.0, "elem": 2.0}


@dataclass(frozen=True)
class Op:
    """One operator on one device.

    Attributes:
        name: Dotted name, e.g. "attn.q".
        group: Breakdown bucket ("attention", "mlp", "moe", "embed", "head").
        kind: "matmul", "attn" or "elem" (sets the backward ratios).
        flops: Forward FLOPs of one instance.
        bytes: Forward bytes moved by one instance.
        count: Instances (experts on the device run as one grouped kernel: launches are not multiplied).
        launches: Kernel launches for all instances together.
        scores: Attention score elements (queries x keys x heads) of an "attn" op.
        head_dim: Per-head width of an "attn" op (mean of the query-key and value widths).
        keys: Keys each query attends to (mean) of an "attn" op.
        decode: An "attn" op with one new query per sequence reading a KV cache.
    """

    name: str
    group: str
    kind: str
    flops: float
    bytes: float
    count: float = 1.0
    launches: float = 1.0
    scores: float = 0.0
    head_dim: float = 0.0
    keys: float = 0.0
    decode: bool = False


@dataclass(frozen=True)
class Shape:
    """Per-device execution shape of one micro-batch (or one decode step).

    Attributes:
        tokens: Tokens of this micro-batch held by the tensor-parallel group (after the CP split).
        span: Mean keys each query attends to (causal skip included) - sets attention FLOPs.
        kv_read: Keys/values each sequence reads from a cache (decode), 0 in training/prefill.
        seqs: Sequences in the micro-batch (for cache reads).
        seq: Full key length of a sequence (sets the unfused s x s score matrix).
        tp: Tensor-parallel degree.
        sp: Sequence parallel (element-wise work split over TP).
        act: Activation bytes per element.
        wgt: Weight bytes per element.
        kv: KV-cache bytes per element.
        flash: Fused attention (no materialised scores).
        eager: Unfused eager-mode kernels (e.g. PyTorch on CPU): more launches and passes per norm/rope.
        ep: Expert-parallel degree.
        etp: Tensor-parallel split of each expert (tp, or 1 when EP spans whole TP groups).
        load: Load factor of the busiest expert-parallel device (max / mean), >= 1.
        touched: Fraction of a device's experts that receive any token (decode reads only those weights).
    """

    tokens: float
    span: float
    kv_read: float = 0.0
    seqs: float = 1.0
    seq: float = 0.0
    tp: int = 1
    sp: bool = True
    act: float = 2.0
    wgt: float = 2.0
    kv: float = 2.0
    flash: bool = True
    eager: bool = False
    ep: int = 1
    etp: int = 1
    load: float = 1.0
    touched: float = 1.0


def matmul(name: str, group: str, m: float, k: float, n: float, s: Shape, count: float = 1.0,
           launches: float = 1.0) -> Op:
    """An (m x k) @ (k x n) matmul: 2mkn FLOPs; reads both operands, writes the result."""
    return Op(name, group, "matmul", 2.0 * m * k * n, s.act * (m * k + m * n) + s.wgt * k * n, count, launches)


def elem(name: str, group: str, elements: float, passes: float, s: Shape, fused_launches: float = 1,
         eager_launches: float = 1, eager_passes: float | None = None) -> Op:
    """An element-wise kernel over `elements` values making `passes` reads+writes of them."""
    p = eager_passes if (s.eager and eager_passes is not None) else passes
    return Op(name, group, "elem", 0.0, s.act * elements * p, 1.0,
              eager_launches if s.eager else fused_launches)


def attention_ops(a: Arch, s: Shape) -> list[Op]:
    """Norm, projections, rotary, core attention, output projection and residual of one block."""
    t, n = s.tp, s.tokens
    n_sp = n / t if s.sp else n
    hq = a.num_heads / t
    d = a.hidden_size
    ops = [elem("attn.norm", "attention", n_sp * d, 2, s, eager_launches=9, eager_passes=7)]
    if a.attention == "gqa":
        hkv = max(a.num_kv_heads / t, 1)
        hd = qk = vd = a.head_dim
        ops += [matmul("attn.q", "attention", n, d, hq * hd, s),
                matmul("attn.kv", "attention", n, d, hkv * hd, s, count=2, launches=2)]
        if s.eager:  # view / transpose calls around the projections; Block, RMSNorm, Attention module calls
            ops.append(elem("attn.views", "attention", 0, 0, s, eager_launches=7))
        cache_width = 2 * hkv * hd  # per token, both k and v
    else:  # MLA: the down-projections are replicated over TP, the up-projections split by head
        hkv = 1
        qk, vd = a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim
        hd = qk
        if a.q_lora_rank:
            ops += [matmul("attn.q_down", "attention", n, d, a.q_lora_rank, s),
                    elem("attn.q_norm", "attention", n * a.q_lora_rank, 2, s, eager_launches=7, eager_passes=7),
                    matmul("attn.q_up", "attention", n, a.q_lora_rank, hq * qk, s)]
        else:
            ops.append(matmul("attn.q", "attention", n, d, hq * qk, s))
        ops += [matmul("attn.kv_down", "attention", n, d, a.kv_lora_rank + a.qk_rope_head_dim, s),
                elem("attn.kv_norm", "attention", n * a.kv_lora_rank, 2, s, eager_launches=7, eager_passes=7),
                matmul("attn.kv_up", "attention", n, a.kv_lora_rank, hq * (a.qk_nope_head_dim + vd), s)]
        cache_width = a.kv_lora_rank + a.qk_rope_head_dim
    rope_width = (hq + hkv) * (a.qk_rope_head_dim if a.attention == "mla" else hd)
    ops.append(elem("attn.rope", "attention", n * rope_width, 3, s, eager_launches=16, eager_passes=10))
    if s.kv_read:  # decode / chunked prefill: append to the cache, then read all cached keys and values
        ops.append(Op("attn.cache_write", "attention", "elem", 0.0, s.kv * n * cache_width, 1.0,
                      13.0 if s.eager else 2.0))
    core_flops = 2.0 * n * s.span * hq * (qk + vd)
    if s.kv_read and a.attention == "mla":  # absorbed MLA decode: attend over the latent directly
        core_flops = 2.0 * n * s.span * hq * (2 * a.kv_lora_rank + a.qk_rope_head_dim)
    core_bytes = s.act * n * hq * (qk + vd) + s.kv * s.seqs * s.kv_read * cache_width
    if not s.kv_read:
        core_bytes += s.act * n * hkv * (qk + vd)
    if not s.flash:  # scores materialised: QK^T writes, softmax reads+writes, dropout, AV reads (~6 passes)
        core_bytes += s.act * n * hq * s.seq * 6
        core_flops = 2.0 * n * s.seq * hq * (qk + vd)  # no causal skipping in the unfused path
    keys = s.span if s.flash else s.seq
    ops.append(Op("attn.core", "attention", "attn", core_flops, core_bytes, 1.0, 1.0 if s.flash else 5.0,
                  scores=n * keys * hq, head_dim=(qk + vd) / 2, keys=keys, decode=bool(s.kv_read)))
    if s.eager:  # (B, H, T, D) -> (B, T, H*D) copy before the output projection
        ops.append(elem("attn.transpose", "attention", n * hq * vd, 2, s, eager_launches=2))
    ops += [matmul("attn.o", "attention", n, hq * vd, d, s),
            elem("attn.residual", "attention", n_sp * d, 3, s)]
    return ops


def ffn_ops(a: Arch, s: Shape, moe: bool) -> list[Op]:
    """Norm, feed-forward (dense SwiGLU/GELU, or router + routed and shared experts) and residual."""
    t, n, d = s.tp, s.tokens, a.hidden_size
    n_sp = n / t if s.sp else n
    ops = [elem("mlp.norm", "mlp", n_sp * d, 2, s, eager_launches=9, eager_passes=7)]
    if not moe:
        f = a.intermediate_size / t
        ops += [matmul("mlp.up", "mlp", n, d, f, s, count=2 if a.gated_mlp else 1,
                       launches=2 if a.gated_mlp else 1),
                elem("mlp.act", "mlp", n * f, 3 if a.gated_mlp else 2, s, eager_launches=4, eager_passes=5),
                matmul("mlp.down", "mlp", n, f, d, s)]
    else:
        e_dev = a.num_experts / s.ep * s.touched  # experts that actually run
        routed = n * a.top_k * s.load * s.etp / t  # token-expert pairs on the busiest device
        m = routed / e_dev  # tokens per running expert
        fe = a.expert_size / s.etp
        ops += [matmul("moe.router", "moe", n_sp, d, a.num_experts, s),
                elem("moe.topk", "moe", n_sp * a.num_experts, 3, s, fused_launches=3, eager_launches=6),
                elem("moe.permute", "moe", routed * d, 2, s, fused_launches=1, eager_launches=4),
                matmul("moe.up", "moe", m, d, fe, s, count=2 * e_dev, launches=2),
                elem("moe.act", "moe", routed * fe, 3, s, eager_launches=2, eager_passes=5),
                matmul("moe.down", "moe", m, fe, d, s, count=e_dev, launches=1),
                elem("moe.unpermute", "moe", routed * d, 3, s, fused_launches=1, eager_launches=4)]
        if a.num_shared_experts:
            fs = a.num_shared_experts * a.shared_expert_size / t
            ops += [matmul("moe.shared_up", "moe", n, d, fs, s, count=2, launches=2),
                    elem("moe.shared_act", "moe", n * fs, 3, s, eager_launches=2, eager_passes=5),
                    matmul("moe.shared_down", "moe", n, fs, d, s)]
    ops.append(elem("mlp.residual", "mlp", n_sp * d, 3, s))
    return ops


def block_ops(a: Arch, s: Shape, moe: bool) -> list[Op]:
    return attention_ops(a, s) + ffn_ops(a, s, moe)


def embed_ops(a: Arch, s: Shape) -> list[Op]:
    """Embedding lookup (vocab-parallel: each TP rank gathers its rows, then an all-reduce)."""
    # eager: the lookup plus the model's per-forward bookkeeping (positions, rotary tables, masks, outputs)
    return [Op("embed.lookup", "embed", "elem", 0.0, s.act * s.tokens * a.hidden_size * 2, 1.0,
               18.0 if s.eager else 1.0)]


def head_ops(a: Arch, s: Shape, loss: bool = True) -> list[Op]:
    """Final norm, LM head (vocab split over TP) and, in training, the cross-entropy over the logits.
    Serving (loss=False) computes logits for one position per sequence only."""
    t, d = s.tp, a.hidden_size
    n = s.tokens if loss else s.seqs
    n_sp = n / t if s.sp else n
    v = a.vocab_size / t
    ops = [elem("head.norm", "head", n_sp * d, 2, s, eager_launches=15, eager_passes=7),
           matmul("head.logits", "head", n, d, v, s)]
    if loss:  # fp32 logits: (eager: shifted copy,) log-softmax reads/writes them, NLL reads them back
        ops.append(Op("head.loss", "head", "elem", 0.0, (5.0 if s.eager else 3.0) * n * v * 4, 1.0,
                      6.0 if s.eager else 3.0))
    return ops


def mtp_ops(a: Arch, s: Shape) -> list[Op]:
    """A multi-token-prediction block: project [h; emb] (2d -> d), one block, the shared head + loss."""
    proj = matmul("mtp.proj", "head", s.tokens, 2 * a.hidden_size, a.hidden_size, s)
    return [proj] + block_ops(a, s, moe=a.moe_layers > 0) + head_ops(a, s)


def model_flops_per_token(a: Arch, seq: int, causal_attention: bool = False) -> float:
    """Forward FLOPs per token by the usual MFU convention: every matmul of the active parameters plus
    the attention core over the full sequence (Megatron-LM counts the s^2 term without causal skipping),
    plus the LM head; MTP blocks included; embeddings (a lookup) excluded.
    """
    d, h = a.hidden_size, a.num_heads
    span = seq / 2 if causal_attention else seq
    if a.attention == "gqa":
        attn = 2 * (a.attn_params()) + 2 * 2 * span * h * a.head_dim
    else:
        attn = 2 * a.attn_params() + 2 * span * h * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
    dense = 2 * (3 if a.gated_mlp else 2) * d * a.intermediate_size
    moe = 2 * (a.top_k * 3 * d * a.expert_size + a.num_shared_experts * 3 * d * a.shared_expert_size
               + d * a.num_experts)
    head = 2 * d * a.vocab_size
    per_layer_ffn = a.dense_layers * dense + a.moe_layers * moe
    mtp = a.mtp_layers * (attn + (moe if a.moe_layers else dense) + 2 * 2 * d * d + head)
    return a.num_layers * attn + per_layer_ffn + head + mtp
