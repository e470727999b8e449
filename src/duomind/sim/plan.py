"""Parallel plan and run settings, and the checks that say why a plan is impossible.

One flat dataclass serves training and inference so that a plan is one small YAML file; fields that a
mode does not use are ignored by it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duomind.sim.arch import Arch
from duomind.sim.hardware import DTYPE_BYTES

RECOMPUTE = ("none", "selective", "full")
LAYOUTS = ("even", "balanced")
OVERLAPS = ("dp", "tp", "ep", "cp", "pp")


class PlanError(ValueError):
    """An impossible plan; `reasons` lists every violated constraint with the fix."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("impossible plan: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class Plan:
    """How a model is laid out on devices and run.

    Attributes:
        dp: Data-parallel replicas.
        tp: Tensor-parallel degree (Megatron column/row split; heads and FFN width are divided).
        pp: Pipeline stages.
        vpp: Virtual stages per device (interleaved 1F1B); 1 = plain 1F1B.
        ep: Expert-parallel degree (each EP rank holds num_experts / ep experts). Carved out of dp * cp, the
            experts are also split over TP (Megatron's default); spanning whole TP groups (ep a multiple of
            tp, e.g. attention TP + expert EP on the same cards in serving), each device holds whole experts.
        cp: Context-parallel degree (sequence split with ring attention).
        zero: ZeRO stage 0-3 over the data-parallel group (1 = distributed optimizer state).
        micro_batch: Sequences per micro-batch.
        global_batch: Sequences per optimizer step; 0 = 4 micro-batches per pipeline stage per replica.
        seq_len: Training sequence length.
        recompute: "none", "selective" (norms, activation function, and core attention when it is not
            flash) or "full" (store only each layer's input; recompute the layer in the backward).
        sequence_parallel: Shard norms/activations over TP (all-gather + reduce-scatter instead of all-reduce).
        flash_attention: Fused attention (no s x s score matrix in memory; causal blocks skipped).
        fused_kernels: Fused element-wise kernels (Megatron, MindSpeed); False models eager PyTorch, where a
            norm or a rotary embedding is several kernels (DuoMind on CPU).
        overlap: Communications hidden behind compute where the schedule allows: dp (gradient reduce in the
            backward), tp (fused compute-communication kernels), ep (all-to-all behind expert/shared-expert
            compute), cp (ring exchange behind attention), pp (send/recv behind the next micro-batch).
        dtype: Compute dtype (bf16, fp16, fp32, int8 for W8A8, fp8).
        weight_dtype: Stored weight dtype for inference ("" = dtype).
        kv_dtype: KV-cache dtype ("" = dtype, but 16-bit when dtype is 8-bit).
        master_weights: Keep fp32 master weights and Adam moments (mixed precision); False for fp32 runs.
        pp_layout: "even" (layers must split evenly over pp * vpp chunks) or "balanced" (uneven split that
            evens stage cost, embedding and head included).
        router_skew: Spread (std of per-expert logit bias) of the router's expert popularity; 0 = uniform.
        router_seed: Seed of the sampled expert popularity and placements.
        batch: Concurrent sequences per model replica in inference.
        prompt_len: Prompt tokens per sequence (prefill).
        gen_len: Generated tokens per sequence (decode).
        context_len: Mean KV length during decode; 0 = prompt_len + gen_len / 2.
    """

    dp: int = 1
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    ep: int = 1
    cp: int = 1
    zero: int = 1
    micro_batch: int = 1
    global_batch: int = 0
    seq_len: int = 4096
    recompute: str = "selective"
    sequence_parallel: bool = True
    flash_attention: bool = True
    fused_kernels: bool = True
    overlap: tuple[str, ...] = ("dp", "cp", "pp")
    dtype: str = "bf16"
    weight_dtype: str = ""
    kv_dtype: str = ""
    master_weights: bool = True
    pp_layout: str = "even"
    router_skew: float = 0.0
    router_seed: int = 0
    batch: int = 1
    prompt_len: int = 1024
    gen_len: int = 256
    context_len: int = 0

    # --- derived ---
    @property
    def devices(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def etp(self) -> int:
        """Tensor-parallel split of each expert: tp when EP is carved from data parallel, else 1."""
        return self.tp if (self.dp * self.cp) % self.ep == 0 else 1

    @property
    def ep_span(self) -> int:
        """Distance between EP ranks in the device order tp-cp-ep-dp (sets whether EP stays in a node)."""
        return self.tp * self.cp if self.etp > 1 else 1

    @property
    def sequences(self) -> int:
        return self.global_batch or self.dp * self.micro_batch * self.pp * 4

    @property
    def micro_batches(self) -> int:
        """Micro-batches per pipeline per step (gradient-accumulation steps)."""
        return max(self.sequences // (self.dp * self.micro_batch), 1)

    @property
    def bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.weight_dtype or self.dtype]

    @property
    def kv_bytes(self) -> float:
        if self.kv_dtype:
            return DTYPE_BYTES[self.kv_dtype]
        return max(DTYPE_BYTES[self.dtype], 2)

    @property
    def mean_context(self) -> float:
        return self.context_len or self.prompt_len + self.gen_len / 2

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _FIELDS}  # flat fields: no deep copy (search calls this a lot)
        d["overlap"] = list(self.overlap)
        return d

    def problems(self, arch: Arch, mode: str = "train") -> list[str]:
        """Every reason this plan cannot run `arch` (empty when it can)."""
        out = []
        for f in ("dp", "tp", "pp", "vpp", "ep", "cp", "micro_batch", "seq_len", "batch", "prompt_len"):
            if getattr(self, f) < 1:
                out.append(f"{f}={getattr(self, f)} must be >= 1")
        if out:
            return out
        if self.zero not in (0, 1, 2, 3):
            out.append(f"zero={self.zero} must be 0, 1, 2 or 3")
        if self.recompute not in RECOMPUTE:
            out.append(f"recompute={self.recompute!r} must be one of {RECOMPUTE}")
        if self.pp_layout not in LAYOUTS:
            out.append(f"pp_layout={self.pp_layout!r} must be one of {LAYOUTS}")
        bad = [o for o in self.overlap if o not in OVERLAPS]
        if bad:
            out.append(f"overlap {bad} unknown; choose from {OVERLAPS}")
        for f in ("dtype", "weight_dtype", "kv_dtype"):
            if getattr(self, f) and getattr(self, f) not in DTYPE_BYTES:
                out.append(f"{f}={getattr(self, f)!r} unknown; choose from {sorted(DTYPE_BYTES)}")
        t = self.tp
        if arch.num_heads % t:
            out.append(f"TP {t} does not divide the {arch.num_heads} attention heads; choose tp from "
                       f"{_divisors(arch.num_heads)}")
        if arch.attention == "gqa" and arch.num_kv_heads % t and t % arch.num_kv_heads:
            out.append(f"TP {t} neither divides nor is a multiple of the {arch.num_kv_heads} KV heads")
        if arch.dense_layers and arch.intermediate_size % t:
            out.append(f"TP {t} does not divide intermediate_size {arch.intermediate_size}")
        if arch.moe_layers and self.ep >= 1 and arch.expert_size % t and self.etp > 1:
            out.append(f"TP {t} does not divide expert_size {arch.expert_size}")
        chunks = self.pp * self.vpp
        if self.vpp > 1 and self.pp == 1:
            out.append("vpp > 1 (interleaving) needs pp > 1")
        if arch.num_layers < chunks:
            out.append(f"PP {self.pp} x VPP {self.vpp} = {chunks} chunks exceed the {arch.num_layers} layers")
        elif self.pp_layout == "even" and arch.num_layers % chunks:
            out.append(f"PP {self.pp} x VPP {self.vpp} = {chunks} does not divide the {arch.num_layers} layers; "
                       f"choose pp*vpp from {_divisors(arch.num_layers)} or set pp_layout: balanced")
        if self.ep > 1:
            if not arch.moe_layers:
                out.append(f"EP {self.ep} needs an MoE/MoGE model; {arch.name} is dense")
            elif arch.num_experts % self.ep:
                out.append(f"EP {self.ep} does not divide the {arch.num_experts} experts")
            if (self.dp * self.cp) % self.ep and (self.ep % self.tp or (self.dp * self.cp * self.tp) % self.ep):
                out.append(f"EP {self.ep} must divide dp*cp = {self.dp * self.cp}, or be a multiple of tp that "
                           f"divides dp*cp*tp = {self.dp * self.cp * self.tp}")
        if mode == "infer" and self.cp > 1:
            out.append(f"CP {self.cp}: context parallelism is modelled for training only; set cp: 1 for inference")
        if mode == "train":
            if self.seq_len % self.cp:
                out.append(f"CP {self.cp} does not divide seq_len {self.seq_len}")
            if self.global_batch and self.global_batch % (self.dp * self.micro_batch):
                out.append(f"global_batch {self.global_batch} is not a multiple of dp*micro_batch = "
                           f"{self.dp * self.micro_batch}")
        return out

    def check(self, arch: Arch, mode: str = "train") -> None:
        problems = self.problems(arch, mode)
        if problems:
            raise PlanError(problems)


_FIELDS = tuple(f.name for f in dataclasses.fields(Plan))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 64) + 1) if n % d == 0]


def load_plan(spec: str | Path | dict[str, Any] | Plan | None, **overrides: Any) -> Plan:
    """A `Plan` from a YAML/JSON file or mapping, with non-None overrides applied."""
    if isinstance(spec, Plan):
        base: dict[str, Any] = spec.to_dict()
    elif spec is None:
        base = {}
    elif isinstance(spec, dict):
        base = dict(spec)
    else:
        from duomind.config import load_mapping

        base = load_mapping(spec)
        base = base.get("plan", base)
    base.update({k: v for k, v in overrides.items() if v is not None})
    if "overlap" in base:
        ov = base["overlap"]
        base["overlap"] = tuple(o.strip() for o in ov.split(",") if o.strip()) if isinstance(ov, str) else tuple(ov)
    known = {f.name for f in dataclasses.fields(Plan)}
    unknown = sorted(set(base) - known)
    if unknown:
        raise PlanError([f"unknown plan field(s) {unknown}; known: {sorted(known)}"])
    return Plan(**base)
