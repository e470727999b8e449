"""Compose operator times, communication, the pipeline schedule and memory into a step time.

Training (arXiv 2505.04519 sec. 3, bottom-up):
  1. per block type (dense / MoE), operator times forward and backward on the hardware profile;
  2. per block, TP (all-gather + reduce-scatter), EP (all-to-all at the busiest device's load), CP (ring
     KV exchange) communication, exposed unless overlapped (then only what compute cannot hide);
  3. recompute adds a forward (full) or the cheap kernels (selective);
  4. layers -> pipeline stages (even, or balanced with embedding and head costed), the slowest device sets
     the pace: step = m * t_slowest + (pp - 1) / vpp * t_mean (1F1B / interleaved bubble);
  5. + exposed DP gradient reduce-scatter / parameter all-gather (ZeRO), pipeline sends, optimizer step.
Inference: prefill = one forward of the prompt; decode step = one forward of `batch` tokens reading the
weights and the KV cache, TP/EP communication at small-message latency.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from duomind.sim.arch import Arch, load_arch
from duomind.sim.hardware import Hardware, get_hardware
from duomind.sim.plan import Plan, PlanError, load_plan
from duomind.sim.routing import max_load_factor
from duomind.sim.workload import (
    BWD,
    BWD_LAUNCHES,
    Op,
    Shape,
    block_ops,
    embed_ops,
    head_ops,
    model_flops_per_token,
    mtp_ops,
)

GB = 1e9


@dataclass
class Result:
    """One simulated configuration.

    Attributes:
        mode: "train" or "infer".
        model: Model name.
        hardware: Hardware profile name.
        devices: Devices used.
        step_time: Seconds per optimizer step (train) or per decode step (infer).
        breakdown: Seconds by component; sums to step_time.
        tokens_per_s: Tokens per second over all devices (train: trained tokens; infer: generated tokens).
        mfu: Model FLOPs utilisation (see `workload.model_flops_per_token` for the convention).
        memory: Bytes per device (busiest device) by component, with "total" and "capacity".
        params: Total / active parameter counts.
        plan: The plan's fields.
        details: Mode-specific numbers (micro-batches, bubble fraction, EP load factor, TTFT, ...).
    """

    mode: str
    model: str
    hardware: str
    devices: int
    step_time: float
    breakdown: dict[str, float]
    tokens_per_s: float
    mfu: float
    memory: dict[str, float]
    params: dict[str, float]
    plan: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s_per_device(self) -> float:
        return self.tokens_per_s / self.devices

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tokens_per_s_per_device"] = self.tokens_per_s_per_device
        d["feasible"] = True
        return d


# --- operator and collective times ---

def op_seconds(hw: Hardware, op: Op, dtype: str, bwd: bool = False, train: bool = False) -> float:
    """Time of `op` (all its instances) forward or backward; `train`: a forward that records autograd."""
    k = op.kind
    # the backward repeats forward-sized work (a matmul's dgrad and wgrad are each as big as its forward), so
    # it runs at the forward's per-size rate, `ratio` times over
    ratio = (hw.attn_bwd if k == "attn" else BWD[k]) if bwd else 1.0
    launches = op.launches * (BWD_LAUNCHES[k] if bwd else 1.0)
    if k == "attn":
        t = hw.attn_time(op.flops, op.bytes, dtype, op.scores, op.head_dim, op.keys, op.decode)
    else:
        t = hw.op_time(op.flops, op.bytes, dtype, k)
    return op.count * ratio * t + launches * hw.launch(k, bwd, train)


def cost(hw: Hardware, ops: list[Op], dtype: str, bwd: bool = False, train: bool = False) -> dict[str, float]:
    """Seconds by breakdown group."""
    out: dict[str, float] = {}
    for op in ops:
        out[op.group] = out.get(op.group, 0.0) + op_seconds(hw, op, dtype, bwd, train)
    return out


def _lat(hw: Hardware, p: int) -> float:
    return hw.link_latency * math.ceil(math.log2(p)) if p > 1 else 0.0


def all_gather(hw: Hardware, nbytes: float, p: int, span: int = 1) -> float:
    """Ring all-gather (or reduce-scatter) of a `nbytes` tensor over `p` devices."""
    return (p - 1) / p * nbytes / hw.link_bw(p, span) + _lat(hw, p) if p > 1 else 0.0


def all_to_all(hw: Hardware, nbytes: float, p: int, span: int = 1) -> float:
    """All-to-all where each device sends `nbytes` in total, (p-1)/p of it off-device."""
    return (p - 1) / p * nbytes / hw.link_bw(p, span) + _lat(hw, p) if p > 1 else 0.0


def _exposed(comm: float, hide: float, key: str, plan: Plan) -> float:
    return max(0.0, comm - hide) if key in plan.overlap else comm


def _add(acc: dict[str, float], part: dict[str, float], scale: float = 1.0) -> None:
    for k, v in part.items():
        acc[k] = acc.get(k, 0.0) + v * scale


# --- training ---

# selective recompute: cheap kernels whose outputs are large (norms, activation functions, MoE permutation)
_SELECTIVE = {"attn.norm", "mlp.norm", "mlp.act", "moe.act", "moe.shared_act", "attn.q_norm", "attn.kv_norm",
              "moe.permute"}


def _block_step(a: Arch, p: Plan, hw: Hardware, s: Shape, moe: bool) -> dict[str, float]:
    """Seconds of one block for one micro-batch (forward + backward + recompute + exposed comm), by part."""
    ops = block_ops(a, s, moe)
    fwd, bwd = cost(hw, ops, p.dtype, train=True), cost(hw, ops, p.dtype, bwd=True)
    out: dict[str, float] = {}
    _add(out, fwd)
    _add(out, bwd)
    t_fwd, t_bwd = sum(fwd.values()), sum(bwd.values())
    if p.recompute == "full":
        out["recompute"] = t_fwd
    elif p.recompute == "selective":
        again = [o for o in ops if o.name in _SELECTIVE or (o.name == "attn.core" and not s.flash)]
        out["recompute"] = sum(op_seconds(hw, o, p.dtype) for o in again)
    passes = 3 if p.recompute == "full" else 2  # forward, backward (+ forward again)
    act = s.tokens * a.hidden_size * s.act
    if p.tp > 1:  # two sub-layers, each AG + RS (sequence parallel) or one all-reduce of the same volume
        per_pass = 2 * 2 * all_gather(hw, act, p.tp)
        out["tp_comm"] = sum(_exposed(per_pass, t, "tp", p) for t in (t_fwd, t_bwd, t_fwd)[:passes])
    if moe and p.ep > 1:  # dispatch + combine each pass; sized by the busiest device's load
        vol = s.tokens / p.tp * a.top_k * a.hidden_size * s.act * s.load
        per_pass = 2 * all_to_all(hw, vol, p.ep, p.ep_span)
        out["ep_comm"] = sum(_exposed(per_pass, t, "ep", p) for t in (t_fwd, t_bwd, t_fwd)[:passes])
    if p.cp > 1:  # ring attention: pass K/V chunks (cp - 1) times; backward also returns their gradients
        width = (a.kv_lora_rank + a.qk_rope_head_dim if a.attention == "mla"
                 else 2 * max(a.num_kv_heads / p.tp, 1) * a.head_dim)
        ring = (p.cp - 1) * s.tokens * width * s.act / hw.link_bw(p.cp, p.tp)
        core = [o for o in ops if o.name == "attn.core"][0]
        hide_f, hide_b = op_seconds(hw, core, p.dtype), op_seconds(hw, core, p.dtype, True)
        out["cp_comm"] = _exposed(ring, hide_f, "cp", p) + _exposed(2 * ring, hide_b, "cp", p)
    return out


def _stage_layers(a: Arch, p: Plan, t_layer: float, t_first: float, t_last: float) -> list[tuple[int, int]]:
    """(dense, moe) layers per pipeline device. Even: pp*vpp equal chunks, chunk j on device j % pp.
    Balanced: water-fill layers so device cost (embedding on the first, head on the last) evens out."""
    L, pp, chunks = a.num_layers, p.pp, p.pp * p.vpp
    if p.pp_layout == "even":
        per_chunk = L // chunks
        counts = [0] * pp
        dense = [0] * pp
        for j in range(chunks):
            lo = j * per_chunk
            counts[j % pp] += per_chunk
            dense[j % pp] += max(0, min(a.dense_layers, lo + per_chunk) - lo)
        return [(dn, c - dn) for c, dn in zip(counts, dense)]
    extra = [0.0] * pp
    extra[0] += t_first
    extra[-1] += t_last
    counts = [1] * pp  # every device holds a layer (the last may hold just one, beside head and MTP)
    for _ in range(L - sum(counts)):
        i = min(range(pp), key=lambda d: (counts[d] + 1) * t_layer + extra[d])
        counts[i] += 1
    out, left = [], a.dense_layers
    for c in counts:  # the leading dense layers sit on the first devices
        dn = min(c, left)
        left -= dn
        out.append((dn, c - dn))
    return out


def _param_split(a: Arch, p: Plan, stage: tuple[int, int], first: bool, last: bool) -> tuple[float, float]:
    """(non-expert, expert) parameters held by one device of a pipeline stage."""
    dense_n, moe_n = stage
    d = a.hidden_size
    attn = a.attn_params() + 2 * d
    ffn = (3 if a.gated_mlp else 2) * d * a.intermediate_size
    shared = a.num_shared_experts * 3 * d * a.shared_expert_size + d * a.num_experts
    experts = a.num_experts * 3 * d * a.expert_size
    non_exp = (dense_n + moe_n) * attn + dense_n * ffn + moe_n * shared
    exp = moe_n * experts
    if first:
        non_exp += a.vocab_size * d
    if last:
        non_exp += (0 if a.tie_embeddings and p.pp == 1 else a.vocab_size * d) + d
        if a.mtp_layers:
            non_exp += a.mtp_layers * (attn + 2 * d * d + (shared if a.moe_layers else ffn))
            exp += a.mtp_layers * (experts if a.moe_layers else 0)
    return non_exp / p.tp, exp / (p.etp * p.ep)


def _act_per_layer(a: Arch, p: Plan, s: Shape, moe: bool) -> float:
    """Activation bytes one block keeps for its backward (per micro-batch, per device)."""
    t, n, d, B = p.tp, s.tokens, a.hidden_size, s.act
    n_sp = n / t if s.sp else n
    if p.recompute == "full":
        return n_sp * d * B
    hq = a.num_heads / t
    if a.attention == "gqa":
        qkv = hq * a.head_dim + 2 * max(a.num_kv_heads / t, 1) * a.head_dim
        out_w = hq * a.head_dim
    else:
        qkv = hq * (2 * (a.qk_nope_head_dim + a.qk_rope_head_dim) + a.v_head_dim) + a.kv_lora_rank + a.q_lora_rank
        out_w = hq * a.v_head_dim
    keep_norm_out = p.recompute == "none"
    attn = n_sp * d * (1 + keep_norm_out) + n * (qkv + out_w)
    scores = 0.0 if s.flash or p.recompute == "selective" else n * hq * s.seq * 2.5  # probs + dropout mask
    if moe:  # selective recompute re-permutes the tokens instead of keeping the k copies of each
        routed = n * a.top_k * s.load * s.etp / t
        fe = a.expert_size / s.etp
        fs = a.num_shared_experts * a.shared_expert_size / t
        ffn = routed * (d * keep_norm_out + fe * (2 + keep_norm_out)) + n * fs * (2 + keep_norm_out)
        ffn += n_sp * a.num_experts * 2
    else:
        f = a.intermediate_size / t
        ffn = n * f * ((2 if a.gated_mlp else 1) + keep_norm_out)
    return B * (attn + scores + n_sp * d * (1 + keep_norm_out) + ffn)


def simulate_train(arch: Arch | str, plan: Plan | dict | str, hardware: Hardware | str,
                   check_memory: bool = True) -> Result:
    """Simulate one training step.

    Raises:
        PlanError: the plan cannot run this model (with every reason), or it does not fit in memory.
    """
    a, p, hw = load_arch(arch), load_plan(plan), get_hardware(hardware)
    p.check(a, "train")
    # the optimizer sweeps all weights, gradients and moments: on a CPU that streams from DRAM; the layers'
    # kernels work on freshly written activations and keep the per-kernel rates
    hw_opt = hw.for_working_set(_state_bytes(a, p))
    n = p.micro_batch * p.seq_len / p.cp
    moe = a.moe_layers > 0
    load = 1.0
    if moe and p.ep > 1:
        groups = a.num_groups if a.mlp == "moge" else 1
        load = max_load_factor(a.num_experts, a.top_k, p.ep, int(n * p.ep * p.etp / p.tp), round(p.router_skew, 3),
                               groups, p.router_seed)
    s = Shape(tokens=n, span=p.seq_len / 2 if p.flash_attention else p.seq_len, seqs=p.micro_batch,
              seq=p.seq_len, tp=p.tp, sp=p.sequence_parallel, act=p.bytes, wgt=p.bytes, kv=p.bytes,
              flash=p.flash_attention, eager=not p.fused_kernels or hw.eager, ep=p.ep, etp=p.etp, load=load)

    blocks = {"dense": _block_step(a, p, hw, s, moe=False) if a.dense_layers else {}}
    if moe:
        blocks["moe"] = _block_step(a, p, hw, s, moe=True)
        if load > 1.0:
            even = _block_step(a, p, hw, dataclasses.replace(s, load=1.0), moe=True)
            extra = sum(blocks["moe"].values()) - sum(even.values())
            blocks["moe"] = {**even, "ep_imbalance": extra}
    t_block = {k: sum(v.values()) for k, v in blocks.items()}

    def ends(ops: list[Op]) -> dict[str, float]:
        out: dict[str, float] = {}
        _add(out, cost(hw, ops, p.dtype, train=True))
        _add(out, cost(hw, ops, p.dtype, bwd=True))
        return out

    first = ends(embed_ops(a, s))
    last = ends(head_ops(a, s) + (mtp_ops(a, s) * a.mtp_layers if a.mtp_layers else []))
    if p.tp > 1:  # embedding all-reduce, head input gather, MTP blocks' sub-layers; forward and backward
        c = 2 * all_gather(hw, s.tokens * a.hidden_size * s.act, p.tp)
        first["tp_comm"] = 2 * c
        last["tp_comm"] = 2 * c * (1 + 2 * a.mtp_layers)
    t_avg_layer = (t_block.get("dense", 0.0) * a.dense_layers + t_block.get("moe", 0.0) * a.moe_layers) / a.num_layers
    stages = _stage_layers(a, p, t_avg_layer, sum(first.values()), sum(last.values()))

    per_dev: list[dict[str, float]] = []
    for i, (dn, mn) in enumerate(stages):
        dev: dict[str, float] = {}
        _add(dev, blocks["dense"], dn)
        _add(dev, blocks.get("moe", {}), mn)
        if i == 0:
            _add(dev, first)
        if i == p.pp - 1:
            _add(dev, last)
        per_dev.append(dev)
    totals = [sum(d.values()) for d in per_dev]
    slow = max(range(p.pp), key=lambda i: totals[i])
    t_max, t_mean = totals[slow], sum(totals) / p.pp
    m = p.micro_batches

    # step = m * t_max + bubble; reported as the mean device's parts + what the slowest adds + bubble
    breakdown: dict[str, float] = {}
    for d in per_dev:
        _add(breakdown, d, m / p.pp)
    if p.pp > 1:
        breakdown["pp_imbalance"] = m * (t_max - t_mean)
        breakdown["pp_bubble"] = (p.pp - 1) / p.vpp * t_mean
        p2p = s.tokens * a.hidden_size * s.act / (p.tp if p.sequence_parallel else 1)
        t_p2p = p2p / hw.link_bw(2, p.tp * p.cp * p.dp) + hw.link_latency
        sends = 2 * (p.pp * p.vpp - 1) if "pp" in p.overlap else 2 * m * p.vpp
        breakdown["pp_comm"] = sends * t_p2p

    # data parallel: gradient reduce(-scatter) + parameter all-gather, at the slowest stage's size
    non_exp, exp = _param_split(a, p, stages[slow], slow == 0, slow == p.pp - 1)
    dp_group, edp = p.dp * p.cp, max(p.dp * p.cp // p.ep, 1)
    span = p.tp
    gb = p.bytes  # gradients reduced in the compute dtype (Megatron-core default grad_reduce_in_fp32=False)
    rs = all_gather(hw, non_exp * gb, dp_group, span) + all_gather(hw, exp * gb, edp, span * p.ep)
    ag = all_gather(hw, non_exp * p.bytes, dp_group, span) + all_gather(hw, exp * p.bytes, edp, span * p.ep)
    if p.zero == 0:
        rs, ag = 2 * rs, 0.0  # all-reduce = reduce-scatter + all-gather of gradients
    fwd_share = 1 / 3 if p.recompute != "full" else 1 / 4
    t_mb_fwd, t_mb_bwd = t_max * fwd_share, t_max * (1 - fwd_share)
    t_dp = _exposed(rs, t_mb_bwd, "dp", p) + _exposed(ag, t_mb_fwd, "dp", p)
    if p.zero == 3:  # parameters gathered for every micro-batch's forward and backward
        t_dp += 2 * m * _exposed(ag, t_mb_fwd, "dp", p)
    breakdown["dp_comm"] = t_dp

    # optimizer step on the local shard (ZeRO >= 1 shards optimizer state over data parallel)
    shard = (non_exp / dp_group + exp / edp) if p.zero >= 1 else non_exp + exp
    if p.fused_kernels and not hw.eager:  # fused Adam over all tensors: fp32 p, g, m, v read; p, m, v (+ 16-bit copy) written
        breakdown["optimizer"] = shard * 30.0 / hw_opt.bytes_rate(shard * 30.0) + 8 * hw.op_overhead
    else:  # PyTorch's single-tensor AdamW: per tensor ~10 kernels, together ~84 bytes per fp32 element
        tensors = 9 * sum(stages[slow]) + 3
        per_kernel = shard / tensors * 12.0  # bytes one kernel touches (two or three fp32 arrays)
        breakdown["optimizer"] = shard * 84.0 / hw_opt.bytes_rate(per_kernel) + 10 * tensors * hw.op_overhead

    step = sum(breakdown.values())
    tokens = p.sequences * p.seq_len
    model_flops = model_flops_per_token(a, p.seq_len) * 3 * tokens
    mfu = model_flops / (step * p.devices * hw.peak(p.dtype))

    # memory on the busiest device (first stage: most micro-batches in flight)
    mem = _train_memory(a, p, s, stages, hw)
    result = Result("train", a.name, hw.name, p.devices, step, breakdown, tokens / step, mfu, mem, a.params(),
                    p.to_dict(), {"micro_batches": m, "ep_load_factor": load,
                                  "bubble_fraction": breakdown.get("pp_bubble", 0.0) / step,
                                  "stage_layers": [dn + mn for dn, mn in stages], "model_flops": model_flops})
    if check_memory and mem["total"] > hw.mem_bytes:
        raise PlanError([_overflow(mem, hw, _TRAIN_FIXES)])
    return result


def _state_bytes(a: Arch, p: Plan) -> float:
    """Weights, gradients and optimizer state per device (a mean stage; sets the memory working set)."""
    pr = a.params()
    per_dev = (pr["total"] - pr["experts"]) / (p.tp * p.pp) + pr["experts"] / (p.etp * p.ep * p.pp)
    grad_b = 4 if p.master_weights else p.bytes
    opt_b = 12 if p.master_weights else 8
    return per_dev * (p.bytes + grad_b + opt_b)


def _train_memory(a: Arch, p: Plan, s: Shape, stages: list[tuple[int, int]], hw: Hardware) -> dict[str, float]:
    best: dict[str, float] = {}
    for i, st in enumerate(stages):
        non_exp, exp = _param_split(a, p, st, i == 0, i == p.pp - 1)
        dp_group, edp = p.dp * p.cp, max(p.dp * p.cp // p.ep, 1)
        shard = non_exp / dp_group + exp / edp
        full = non_exp + exp
        weights = (shard if p.zero == 3 else full) * p.bytes
        grad_b = 4 if p.master_weights else p.bytes  # fp32 main gradients under mixed precision
        grads = (shard if p.zero >= 2 else full) * grad_b
        opt_b = 12 if p.master_weights else 8  # (fp32 master) + Adam m, v
        optim = (shard if p.zero >= 1 else full) * opt_b
        dn, mn = st
        per_mb = dn * _act_per_layer(a, p, s, False) + mn * _act_per_layer(a, p, s, True)
        # 1F1B: device i holds (pp - i) micro-batches in flight; interleaving adds (pp-1)/(pp*vpp) of a stage
        in_flight = min(p.pp - i, p.micro_batches) * ((1 + (p.pp - 1) / (p.pp * p.vpp)) if p.vpp > 1 else 1)
        acts = per_mb * in_flight
        if p.recompute == "full" and dn + mn:  # plus one layer's full activations while it is recomputed
            acts += _act_per_layer(a, p.replace(recompute="none"), s, mn > 0)
        if i == p.pp - 1:  # fp32 logits and their gradient
            acts += s.tokens * a.vocab_size / p.tp * 4 * 2
        mem = {"weights": weights, "grads": grads, "optimizer": optim, "activations": acts}
        mem["total"] = sum(mem.values())
        if mem["total"] > best.get("total", -1):
            best = mem
    best["capacity"] = hw.mem_bytes
    return best


def _overflow(mem: dict[str, float], hw: Hardware, fixes: str) -> str:
    parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in mem.items() if k not in ("total", "capacity"))
    return (f"memory overflow: needs {mem['total'] / GB:.1f} GB per device ({parts} GB) but {hw.name} has "
            f"{hw.mem_bytes / GB:.0f} GB; try {fixes}")


_TRAIN_FIXES = "recompute=full, larger tp/pp/ep, zero >= 1 or a smaller micro_batch"
_INFER_FIXES = "larger tp/pp/ep, int8 weights or KV, a smaller batch or a shorter context"


# --- inference ---

def simulate_infer(arch: Arch | str, plan: Plan | dict | str, hardware: Hardware | str,
                   check_memory: bool = True) -> Result:
    """Simulate serving: prefill of the prompts, then one decode step at the mean context length.

    Each of the dp replicas serves `batch` sequences; attention is split over tp, experts over ep (carved
    from dp), layers over pp (stages run one after another for one batch).

    Raises:
        PlanError: impossible plan or memory overflow (weights + KV cache).
    """
    a, p, hw = load_arch(arch), load_plan(plan), get_hardware(hardware)
    p.check(a, "infer")
    mem0 = _infer_memory(a, p)
    hw = hw.for_working_set(mem0["weights"] + mem0["kv_cache"])
    dtype = p.dtype
    moe = a.moe_layers > 0
    groups = a.num_groups if a.mlp == "moge" else 1
    base = dict(tp=p.tp, sp=False, act=max(p.bytes, 2), wgt=p.weight_bytes, kv=p.kv_bytes, flash=p.flash_attention,
                eager=not p.fused_kernels or hw.eager, ep=p.ep, etp=p.etp)

    def forward(s: Shape, loss: bool = False) -> tuple[float, dict[str, float], float]:
        out: dict[str, float] = {}
        load = s.load
        for is_moe, count in ((False, a.dense_layers), (True, a.moe_layers)):
            if count:
                part = cost(hw, block_ops(a, s, is_moe), dtype)
                if is_moe and load > 1.0:
                    even = cost(hw, block_ops(a, dataclasses.replace(s, load=1.0), True), dtype)
                    part = {**even, "ep_imbalance": sum(part.values()) - sum(even.values())}
                _add(out, part, count)
        _add(out, cost(hw, embed_ops(a, s) + head_ops(a, s, loss=False), dtype))
        act = s.tokens * a.hidden_size * s.act
        if p.tp > 1:  # one all-reduce per sub-layer
            out["tp_comm"] = a.num_layers * 2 * 2 * all_gather(hw, act, p.tp)
        if moe and p.ep > 1:
            vol = s.tokens / p.tp * a.top_k * a.hidden_size * s.act  # each TP rank dispatches its share
            out["ep_comm"] = a.moe_layers * 2 * all_to_all(hw, vol * load, p.ep, p.ep_span)
            out["ep_imbalance"] = out.get("ep_imbalance", 0.0)
        if p.pp > 1:
            out["pp_comm"] = (p.pp - 1) * (act / hw.link_bw(2, p.tp) + hw.link_latency)
        return sum(out.values()), out, load

    def shape(tokens: float, span: float, kv_read: float, seqs: float) -> Shape:
        load, touched = 1.0, 1.0
        if moe:
            routed = int(tokens * p.ep * p.etp / p.tp)  # tokens routed together over the EP domain
            load = max_load_factor(a.num_experts, a.top_k, p.ep, routed, round(p.router_skew, 3), groups,
                                   p.router_seed) if p.ep > 1 else 1.0
            touched = 1.0 - (1.0 - a.top_k / a.num_experts) ** routed  # experts that see any token
        return Shape(tokens=tokens, span=span, kv_read=kv_read, seqs=seqs, seq=span, load=load, touched=touched,
                     **base)

    prompt = p.batch * p.prompt_len
    ttft, _, _ = forward(shape(prompt, p.prompt_len / 2, 0.0, p.batch))
    ctx = p.mean_context
    tpot, breakdown, load = forward(shape(p.batch, ctx, ctx, p.batch))
    tokens_per_s = p.dp * p.batch / tpot
    devices = p.dp * p.tp * p.pp
    flops = 2 * (a.params()["active"] - a.vocab_size * a.hidden_size) + 4 * ctx * a.num_layers * a.num_heads * (
        a.head_dim if a.attention == "gqa" else a.qk_nope_head_dim + a.qk_rope_head_dim)
    mfu = flops * tokens_per_s / (devices * hw.peak(dtype))
    mem = _infer_memory(a, p)
    mem["capacity"] = hw.mem_bytes
    result = Result("infer", a.name, hw.name, devices, tpot, breakdown, tokens_per_s, mfu, mem, a.params(),
                    p.to_dict(), {"ttft_s": ttft, "tpot_s": tpot, "prefill_tokens_per_s": p.dp * prompt / ttft,
                                  "ep_load_factor": load, "mean_context": ctx})
    if check_memory and mem["total"] > hw.mem_bytes:
        raise PlanError([_overflow(mem, hw, _INFER_FIXES)])
    return result


def _infer_memory(a: Arch, p: Plan) -> dict[str, float]:
    """Weights (MTP blocks not loaded), KV cache and the prefill working set per device."""
    pr = a.params()
    non_exp = pr["total"] - pr["experts"] - pr["mtp"]  # MTP blocks are not loaded for serving
    weights = (non_exp / (p.tp * p.pp) + pr["experts"] / (p.etp * p.ep * p.pp)) * p.weight_bytes
    if a.attention == "mla":
        kv_shard = 1  # one latent per token, replicated over TP
    else:
        kv_shard = min(p.tp, a.num_kv_heads)  # KV heads are copied when TP exceeds them
    # continuous batching keeps sequences at every stage of generation: KV at the mean context length
    kv = p.batch * p.mean_context * a.kv_bytes_per_token(p.kv_bytes) / (kv_shard * p.pp)
    acts = p.batch * p.prompt_len * a.hidden_size * max(p.bytes, 2) * 4 / p.tp
    mem = {"weights": weights, "kv_cache": kv, "activations": acts}
    mem["total"] = sum(mem.values())
    return mem


def simulate(mode: str, arch: Arch | str, plan: Plan | dict | str, hardware: Hardware | str,
             check_memory: bool = True) -> Result:
    """`simulate_train` or `simulate_infer` by `mode`."""
    if mode == "train":
        return simulate_train(arch, plan, hardware, check_memory)
    if mode == "infer":
        return simulate_infer(arch, plan, hardware, check_memory)
    raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
