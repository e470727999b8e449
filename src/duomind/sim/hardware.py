"""Hardware profiles as data: peak rates, memory, links and efficiency factors, each with its source.

A profile's efficiency factors are set ONCE per profile (from a datasheet-grade measurement, from
`duomind sim calibrate`, or from one declared anchor case) and never per validation case; `set_by` says
which. Times use a roofline per operator plus a fixed launch overhead:

    t(op) = max(flops / (peak * matmul_eff), bytes / (mem_bw * mem_eff)) + launches * overhead(kind)

A calibrated profile (`local`) replaces the constant efficiencies with measured curves: achieved FLOP/s
as a function of the matmul's size, achieved bytes/s as a function of the bytes one kernel touches, and a
cap on that rate set by the step's whole working set (a CPU streams weights from L2, L3 or DRAM depending
on how much memory one step cycles through, not on the size of one kernel).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CURVES = ("matmul_curve", "mem_curve", "matmul_mem_curve", "stream_curve", "matmul_stream_curve", "attn_curve",
          "attn_table", "attn_decode_table")
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


class UnknownHardwareError(ValueError):
    """A hardware name that is neither a registered profile nor a profile file."""


@dataclass(frozen=True)
class Hardware:
    """One device type and the cluster it sits in.

    Attributes:
        name: Registry name.
        peak_flops: Dense peak FLOP/s per compute dtype ("bf16", "fp16", "fp32", "int8", ...).
        mem_bw: Device memory bandwidth, bytes/s.
        mem_bytes: Device memory capacity, bytes.
        intra_bw: Per-device bandwidth inside a node, one direction, bytes/s (NVLink, HCCS).
        inter_bw: Per-device bandwidth across nodes, one direction, bytes/s (InfiniBand, RoCE).
        node_size: Devices per node (the fast-link domain).
        matmul_eff: Achieved fraction of peak on large matmuls.
        attn_eff: Fused attention's achieved rate relative to a matmul's.
        mem_eff: Achieved fraction of `mem_bw` on streaming kernels.
        link_eff: Achieved fraction of link bandwidth in collectives.
        op_overhead: Seconds per element-wise kernel launch in the forward pass.
        bwd_op_overhead: Seconds per kernel launch in the backward pass (autograd bookkeeping included).
        grad_op_overhead: Seconds per element-wise launch in a training forward, which also records the
            autograd graph (0: op_overhead).
        matmul_overhead: Seconds per matmul call beyond its compute (0: op_overhead).
        attn_overhead: Seconds per fused-attention call beyond its compute (0: op_overhead).
        link_latency: Seconds of latency per collective step.
        attn_bwd: Fused attention backward / forward time ratio (FlashAttention-2 recomputes: ~2.5).
        matmul_curve: Measured (matmul FLOPs, achieved FLOP/s) pairs, ascending; overrides matmul_eff.
        mem_curve: Measured (bytes touched, achieved bytes/s) pairs, ascending; overrides mem_eff.
        matmul_mem_curve: Measured (bytes, bytes/s) of memory-bound (skinny) matmuls with their weight in
            cache; overrides mem_curve for matmuls (a GEMV streams its weight at its own rate).
        stream_curve: Measured (working-set bytes, bytes/s) of element-wise kernels cycling through that much
            memory; caps `mem_curve` once a step's working set is known (`for_working_set`).
        matmul_stream_curve: As stream_curve for skinny matmuls cycling through that many weight bytes.
        working_set: Bytes one step cycles through on a device (0 = unknown: no cap). Set by the simulator.
        eager: The device runs unfused PyTorch eager kernels (a calibrated CPU): plans are simulated with
            `fused_kernels=False` whatever they say.
        attn_curve: Measured (FLOPs, FLOP/s) of fused causal attention; overrides matmul rate * attn_eff.
        attn_table: Measured (head_dim, keys per query, seconds per score element) of fused causal attention
            over a grid; overrides attn_curve (a CPU kernel's cost per score grows with head_dim and falls with
            sequence length, which one FLOP-keyed curve cannot express).
        attn_decode_table: As attn_table for one query per sequence over a cache of `keys` keys (decode).
        sources: Field name -> where its value comes from.
        set_by: How the efficiency factors were set (datasheet, calibration, or the one anchor case).
    """

    name: str
    peak_flops: dict[str, float]
    mem_bw: float
    mem_bytes: float
    intra_bw: float
    inter_bw: float
    node_size: int
    matmul_eff: float = 0.8
    attn_eff: float = 0.75
    mem_eff: float = 0.85
    link_eff: float = 0.75
    op_overhead: float = 5e-6
    bwd_op_overhead: float = 5e-6
    grad_op_overhead: float = 0.0
    matmul_overhead: float = 0.0
    attn_overhead: float = 0.0
    link_latency: float = 10e-6
    attn_bwd: float = 2.5
    matmul_curve: tuple[tuple[float, float], ...] = ()
    mem_curve: tuple[tuple[float, float], ...] = ()
    matmul_mem_curve: tuple[tuple[float, float], ...] = ()
    stream_curve: tuple[tuple[float, float], ...] = ()
    matmul_stream_curve: tuple[tuple[float, float], ...] = ()
    working_set: float = 0.0
    eager: bool = False
    attn_curve: tuple[tuple[float, float], ...] = ()
    attn_table: tuple[tuple[float, float, float], ...] = ()
    attn_decode_table: tuple[tuple[float, float, float], ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    set_by: str = "datasheet"

    def peak(self, dtype: str) -> float:
        """Peak dense FLOP/s for `dtype`; int8/fp8 fall back to the 16-bit rate where the device has none."""
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        for alt in ("bf16", "fp16", "fp32"):
            if alt in self.peak_flops:
                return self.peak_flops[alt]
        raise ValueError(f"{self.name}: no peak FLOP/s for {dtype!r}")

    def flops_rate(self, flops: float, dtype: str) -> float:
        """Achieved FLOP/s for one matmul of `flops` FLOPs."""
        if self.matmul_curve:
            return interp_log(self.matmul_curve, flops)
        return self.peak(dtype) * self.matmul_eff

    def bytes_rate(self, nbytes: float) -> float:
        """Achieved bytes/s for an element-wise kernel that touches `nbytes` bytes."""
        if not self.mem_curve:
            return self.mem_bw * self.mem_eff
        rate = interp_log(self.mem_curve, nbytes)
        if self.stream_curve and self.working_set:
            rate = min(rate, interp_log(self.stream_curve, self.working_set))
        return rate

    def matmul_bytes_rate(self, nbytes: float) -> float:
        """Achieved bytes/s for a memory-bound matmul that reads/writes `nbytes` bytes."""
        if not self.matmul_mem_curve:
            return self.bytes_rate(nbytes)
        rate = interp_log(self.matmul_mem_curve, nbytes)
        if self.matmul_stream_curve and self.working_set:
            rate = min(rate, interp_log(self.matmul_stream_curve, self.working_set))
        return rate

    def op_time(self, flops: float, nbytes: float, dtype: str, kind: str = "matmul") -> float:
        """Roofline time of one operator instance (launch overhead excluded, see `launch`)."""
        if kind == "attn":
            rate = interp_log(self.attn_curve, flops) if self.attn_curve else (
                self.flops_rate(flops, dtype) * self.attn_eff)
        else:
            rate = self.flops_rate(flops, dtype)
        t_compute = flops / rate if flops else 0.0
        if not nbytes:
            return t_compute
        bw = self.matmul_bytes_rate(nbytes) if kind == "matmul" else self.bytes_rate(nbytes)
        return max(t_compute, nbytes / bw)

    def attn_time(self, flops: float, nbytes: float, dtype: str, scores: float, head_dim: float, keys: float,
                  decode: bool) -> float:
        """Time of one fused attention core: from the measured per-score table when the profile has one."""
        table = self.attn_decode_table if decode else self.attn_table
        if not (table and scores):
            return self.op_time(flops, nbytes, dtype, "attn")
        t = scores * interp_grid(table, head_dim, keys)
        return max(t, nbytes / self.bytes_rate(nbytes)) if nbytes else t

    def for_working_set(self, nbytes: float) -> Hardware:
        """This profile for a step that cycles through `nbytes` of device memory (weights, optimizer state,
        activations, KV cache): caps memory rates where the profile has measured stream curves."""
        if not (self.stream_curve or self.matmul_stream_curve):
            return self
        return dataclasses.replace(self, working_set=float(nbytes))

    def launch(self, kind: str, bwd: bool = False, train: bool = False) -> float:
        """Seconds of fixed overhead per launch of an operator of `kind` (matmul, attn, elem); `train` marks
        a forward pass that records the autograd graph."""
        if kind == "matmul" and self.matmul_overhead:
            return self.matmul_overhead
        if kind == "attn" and self.attn_overhead:
            return self.attn_overhead
        if bwd:
            return self.bwd_op_overhead
        return self.grad_op_overhead if train and self.grad_op_overhead else self.op_overhead

    def link_bw(self, group: int, span: int) -> float:
        """Effective per-device bandwidth of a collective over `group` devices spread `span` devices apart.

        A group whose members all sit in one node (span * group <= node_size) uses the fast links.
        """
        inside = group * span <= self.node_size
        return (self.intra_bw if inside else self.inter_bw) * self.link_eff

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in CURVES:
            d[key] = [list(p) for p in getattr(self, key)]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hardware:
        data = dict(data)
        for key in CURVES:
            data[key] = tuple(tuple(float(v) for v in p) for p in data.get(key, ()))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"hardware profile: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def interp_log(points: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear interpolation in log(x); clamps outside the measured range."""
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return points[0][1]
    if x >= xs[-1]:
        return points[-1][1]
    i = bisect.bisect_left(xs, x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return y0 + w * (y1 - y0)


def interp_grid(points: tuple[tuple[float, float, float], ...], x: float, y: float) -> float:
    """Interpolate z(x, y) over a full grid of (x, y, z) points: log-linear in y, linear in x; clamped."""
    xs = sorted({p[0] for p in points})
    by_x = {x0: tuple(sorted((p[1], p[2]) for p in points if p[0] == x0)) for x0 in xs}
    if x <= xs[0]:
        return interp_log(by_x[xs[0]], y)
    if x >= xs[-1]:
        return interp_log(by_x[xs[-1]], y)
    i = bisect.bisect_left(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    w = (x - x0) / (x1 - x0)
    return (1 - w) * interp_log(by_x[x0], y) + w * interp_log(by_x[x1], y)


GB = 1e9
GiB = 2**30
T = 1e12

_NV = "NVIDIA datasheet"
_MAMF = ("maximum achievable matmul FLOPS (BF16) measured by stas00/ml-engineering, "
         "compute/accelerator/README.md 'Maximum Achievable Matmul FLOPS comparison table'")
_FA2 = ("FlashAttention-2 (arXiv 2307.08691): fwd up to 73%, bwd up to 63% of A100 peak vs ~86% for a "
        "plain matmul -> ~0.75 of the matmul rate")
_ASCEND_NOTE = ("Huawei publishes no per-chip 910B datasheet; value from public third-party reports "
                "(reported range is wide: treat as +/-15%)")

PROFILES: dict[str, Hardware] = {}


def register(hw: Hardware) -> Hardware:
    """Add a profile to the registry; names are unique."""
    if hw.name in PROFILES:
        raise ValueError(f"hardware profile {hw.name!r} is already registered")
    PROFILES[hw.name] = hw
    return hw


register(Hardware(
    name="a100", peak_flops={"bf16": 312 * T, "fp16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T, "int8": 624 * T},
    mem_bw=2.039e12, mem_bytes=80 * GB, intra_bw=300 * GB, inter_bw=25 * GB, node_size=8,
    matmul_eff=0.859, mem_eff=0.85, link_eff=0.75, op_overhead=4e-6, bwd_op_overhead=4e-6,
    sources={"peak_flops": f"{_NV}, A100 SXM4 80GB (dense, no sparsity)",
             "mem_bw": f"{_NV}, A100 SXM4 80GB HBM2e 2,039 GB/s", "mem_bytes": f"{_NV}, 80 GB",
             "intra_bw": "NVLink 3: 600 GB/s bidirectional = 300 GB/s per direction (NVIDIA)",
             "inter_bw": "DGX A100: one 200 Gb/s HDR InfiniBand port per GPU (NVIDIA DGX A100 datasheet)",
             "attn_eff": _FA2, "matmul_eff": f"{_MAMF}: A100 SXM 267.9 / 312 TFLOPS = 0.859",
             "mem_eff": "typical STREAM-like copy on HBM GPUs (~85% of datasheet bandwidth)",
             "link_eff": "typical NCCL bus bandwidth / link bandwidth (~75%)",
             "op_overhead": "typical CUDA kernel launch + framework dispatch (~4 us)"},
    set_by="datasheet (peak, bandwidths) + public MAMF matmul measurement; no validation case used"))

register(Hardware(
    name="h100", peak_flops={"bf16": 989 * T, "fp16": 989 * T, "fp8": 1979 * T, "int8": 1979 * T, "tf32": 494 * T,
                             "fp32": 67 * T},
    mem_bw=3.35e12, mem_bytes=80 * GB, intra_bw=450 * GB, inter_bw=50 * GB, node_size=8,
    matmul_eff=0.801, mem_eff=0.85, link_eff=0.75, op_overhead=4e-6, bwd_op_overhead=4e-6,
    sources={"peak_flops": f"{_NV}, H100 SXM5 (dense, no sparsity)", "mem_bw": f"{_NV}, H100 SXM5 HBM3 3.35 TB/s",
             "mem_bytes": f"{_NV}, 80 GB", "intra_bw": "NVLink 4: 900 GB/s bidirectional = 450 GB/s per direction",
             "inter_bw": "DGX H100: one 400 Gb/s NDR InfiniBand port per GPU",
             "attn_eff": _FA2, "matmul_eff": f"{_MAMF}: H100 SXM 792.1 / 989 TFLOPS = 0.801",
             "mem_eff": "typical STREAM-like copy on HBM GPUs", "link_eff": "typical NCCL bus bandwidth / link",
             "op_overhead": "typical CUDA kernel launch + framework dispatch"},
    set_by="datasheet (peak, bandwidths) + public MAMF matmul measurement; no validation case used"))

register(Hardware(
    name="h200", peak_flops={"bf16": 989 * T, "fp16": 989 * T, "fp8": 1979 * T, "int8": 1979 * T, "tf32": 494 * T,
                             "fp32": 67 * T},
    mem_bw=4.8e12, mem_bytes=141 * GB, intra_bw=450 * GB, inter_bw=50 * GB, node_size=8,
    matmul_eff=0.803, mem_eff=0.85, link_eff=0.75, op_overhead=4e-6, bwd_op_overhead=4e-6,
    sources={"peak_flops": f"{_NV}, H200 SXM (same tensor cores as H100 SXM)",
             "mem_bw": f"{_NV}, H200 HBM3e 4.8 TB/s", "mem_bytes": f"{_NV}, 141 GB",
             "intra_bw": "NVLink 4: 900 GB/s bidirectional", "inter_bw": "400 Gb/s NDR per GPU (HGX H200 systems)",
             "attn_eff": _FA2, "matmul_eff": "stas00/ml-engineering MAMF table: H100/H200 SXM 794.5 / 989 = 0.803",
             "mem_eff": "typical", "link_eff": "typical"},
    set_by="datasheet (peak, bandwidths) + public MAMF matmul measurement; no validation case used"))

# Ascend 910B: the matmul efficiency is the one number set from an anchor case (Pangu Ultra dense,
# arXiv 2504.07866, >52% MFU); every other Ascend case is predicted blind with it. See ASCEND_ANCHOR.
ASCEND_MATMUL_EFF = 0.576
ASCEND_ANCHOR = "pangu-ultra-135b (arXiv 2504.07866, >52% MFU on 8,192 NPUs)"

register(Hardware(
    name="910b", peak_flops={"bf16": 313 * T, "fp16": 313 * T, "int8": 626 * T, "fp32": 78 * T},
    mem_bw=1.6e12, mem_bytes=64 * GB, intra_bw=196 * GB, inter_bw=25 * GB, node_size=8,
    matmul_eff=ASCEND_MATMUL_EFF, mem_eff=0.85, link_eff=0.75, op_overhead=5e-6, bwd_op_overhead=5e-6,
    sources={"peak_flops": f"{_ASCEND_NOTE}; 313 TFLOPS FP16/BF16", "mem_bw": f"{_ASCEND_NOTE}; HBM2e 1.6 TB/s",
             "mem_bytes": f"{_ASCEND_NOTE}; 64 GB HBM2e",
             "intra_bw": "HCCS full mesh in an 8-NPU node: 7 links x 56 GB/s = 392 GB/s bidirectional (public reports)",
             "inter_bw": "Atlas 800T A2: 8 x 200GE RoCE per 8-NPU node = 25 GB/s per NPU",
             "matmul_eff": f"set once from the anchor case {ASCEND_ANCHOR}",
             "attn_eff": "no public Ascend figure; GPU value " + _FA2,
             "mem_eff": "same as the GPU profiles (no public Ascend STREAM figure)", "link_eff": "same as GPUs"},
    set_by=f"matmul_eff fitted once to {ASCEND_ANCHOR}; rest datasheet-grade public figures"))

register(Hardware(
    name="800i-a2", peak_flops={"bf16": 280 * T, "fp16": 280 * T, "int8": 560 * T, "fp32": 70 * T},
    mem_bw=1.6e12, mem_bytes=64 * GB, intra_bw=196 * GB, inter_bw=25 * GB, node_size=8,
    matmul_eff=ASCEND_MATMUL_EFF, mem_eff=0.85, link_eff=0.75, op_overhead=5e-6, bwd_op_overhead=5e-6,
    sources={"peak_flops": f"Atlas 800I A2 inference server, 8 x Ascend 910B4; {_ASCEND_NOTE}; 280 TFLOPS FP16, "
                           "560 TOPS INT8",
             "mem_bw": f"{_ASCEND_NOTE}; 1.6 TB/s", "mem_bytes": "64 GB HBM2e variant (32 GB also sold)",
             "intra_bw": "HCCS, as 910B", "inter_bw": "200GE RoCE per NPU",
             "matmul_eff": f"same chip family as '910b': inherits its once-set value ({ASCEND_ANCHOR})"},
    set_by=f"inherits 910b's matmul_eff ({ASCEND_ANCHOR}); no inference case used"))

register(Hardware(
    name="300i-duo", peak_flops={"fp16": 140 * T, "bf16": 140 * T, "int8": 280 * T, "fp32": 35 * T},
    mem_bw=408 * GB, mem_bytes=96 * GB, intra_bw=25 * GB, inter_bw=12.5 * GB, node_size=4,
    matmul_eff=ASCEND_MATMUL_EFF, mem_eff=0.85, link_eff=0.75, op_overhead=8e-6, bwd_op_overhead=8e-6,
    sources={"peak_flops": "Huawei Atlas 300I Duo card (two Ascend 310P chips): 140 TFLOPS FP16, 280 TOPS INT8",
             "mem_bw": "Atlas 300I Duo: LPDDR4X, 408 GB/s per card", "mem_bytes": "Atlas 300I Duo: 96 GB per card",
             "intra_bw": "PCIe 4.0 x16 between cards (~25 GB/s achievable)", "inter_bw": "100GE per card (assumed)",
             "matmul_eff": "inherits the Ascend value (no public 310P matmul measurement)"},
    set_by="datasheet; matmul_eff inherited from 910b"))

LOCAL_ENV = "DUOMIND_SIM_LOCAL"


def local_profile_path() -> Path:
    """Where `duomind sim calibrate` writes this machine's profile ($DUOMIND_SIM_LOCAL overrides)."""
    return Path(os.environ.get(LOCAL_ENV, Path.home() / ".cache" / "duomind" / "sim_local.json"))


def known_hardware() -> list[str]:
    return sorted(PROFILES) + ["local"]


def get_hardware(name: str | Path | Hardware) -> Hardware:
    """Resolve a profile by registry name, `local` (calibrated), or a YAML/JSON profile file.

    Raises:
        UnknownHardwareError: naming the known profiles.
    """
    if isinstance(name, Hardware):
        return name
    key = str(name).lower()
    if key in PROFILES:
        return PROFILES[key]
    if key == "local":
        path = local_profile_path()
        if not path.is_file():
            raise UnknownHardwareError(f"no calibrated 'local' profile at {path}; run `duomind sim calibrate` first.")
        return Hardware.from_dict(json.loads(path.read_text()))
    path = Path(name)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        from duomind.config import load_mapping

        return Hardware.from_dict(load_mapping(path))
    raise UnknownHardwareError(f"unknown hardware {str(name)!r}; known: {', '.join(known_hardware())} "
                               "(or a .yaml/.json profile file).")
