"""Measure this machine into a hardware profile (`local`): the only module of `duomind.sim` that uses torch,
and only inside `calibrate()`.

Measured with the same library the DuoMind model runs on (PyTorch eager, float32 on CPU):
  1. per-call overheads: small eager ops with and without grad recording, their backward (an autograd
     chain), nn.Linear and SDPA;
  2. matmul FLOP/s (F.linear, operands cycled from beyond L2) at sizes from tiny to large -> `matmul_curve`;
  3. element-wise bytes/s of a mix of model-like kernels, cache-resident to DRAM-sized -> `mem_curve`;
  4. weight reads of skinny (decode) matmuls, cache-hot -> `matmul_mem_curve`, and capped by the working set
     (cycling 1 MiB buffers or weights totalling 1-256 MiB) -> `stream_curve`, `matmul_stream_curve`;
  5. fused attention (SDPA) seconds per score element over head_dim x length, causal and decode ->
     `attn_table`, `attn_decode_table` (and `attn_curve`), and its backward / forward ratio.
Every curve is smoothed (median of neighbours) so one noisy point on a shared machine does not bend it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from duomind.sim.hardware import Hardware, local_profile_path


def _time(fn: Callable[[], Any], min_time: float = 0.02, blocks: int = 5, clock: Callable[[], float] | None = None
          ) -> float:
    """Seconds per call: the fastest of `blocks` blocks, each of enough calls to last `min_time`.

    The clock is this thread's CPU time when torch runs one thread (time slices lost to other processes
    then cost nothing), else wall time. The minimum, because a neighbour's job only ever adds time (through
    shared caches, memory and, on a VM, a shared physical core); calibration and the timed models
    (`benchmarks/sim_validation.py`) use the same statistic so that they see the same machine.
    """
    clock = clock or timer()
    fn()
    reps = 1
    while True:
        t0 = clock()
        for _ in range(reps):
            fn()
        t = clock() - t0
        if t >= min_time or reps >= 1 << 16:
            break
        reps *= 2
    samples = [t / reps]
    for _ in range(blocks - 1):
        t0 = clock()
        for _ in range(reps):
            fn()
        samples.append((clock() - t0) / reps)
    return min(samples)


def _smooth(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sort by size and replace each interior rate by the median of it and its neighbours: one noisy
    measurement on a shared machine should not bend the curve."""
    pts = sorted(points)
    out = list(pts)
    for i in range(1, len(pts) - 1):
        out[i] = (pts[i][0], sorted(r for _, r in pts[i - 1:i + 2])[1])
    return out


def _cycler(items: list[tuple], fn: Callable[..., Any]) -> Callable[[], None]:
    """A call that applies `fn` to the next tuple of `items`, round-robin (defeats cache reuse)."""
    state = {"i": 0}

    def call() -> None:
        i = state["i"]
        state["i"] = (i + 1) % len(items)
        fn(*items[i])

    return call


def timer() -> Callable[[], float]:
    """Thread CPU time when torch is single-threaded, else wall time."""
    import torch

    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def private_cache_bytes() -> int:
    """Size of the largest per-core cache level (L2 on current x86), from sysfs; 1 MiB if unknown."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((d / "level").read_text())
            shared = (d / "shared_cpu_list").read_text().strip()
            size = (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if level >= 2 and shared in ("0",) and size.endswith("K"):
            best = max(best, int(size[:-1]) * 1024)
    return best or 1 << 20


def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrate(path: str | Path | None = None, quick: bool = False, threads: int = 0) -> Hardware:
    """Measure this machine and write its profile as JSON (default: `local_profile_path()`).

    Args:
        path: Output JSON; None writes where `get_hardware("local")` looks.
        quick: Fewer sizes and shorter timings (seconds instead of tens of seconds).
        threads: torch threads (0 = torch's default).
    """
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    min_time = 0.005 if quick else 0.03
    with torch.no_grad():
        x = torch.ones(4, 1, 64)  # a decode-sized activation: the per-call costs of eager PyTorch
        mix = (lambda: x.pow(2), lambda: x.mean(-1, keepdim=True), lambda: x + 1e-6, lambda: torch.rsqrt(x),
               lambda: x * x, lambda: torch.cat((x, x), -1), lambda: x[..., :32], lambda: -x, lambda: F.silu(x),
               lambda: x.transpose(1, 2).reshape(4, 64))
        overhead = sum(_time(f, min_time) for f in mix) / len(mix)  # typical small eager op
    with torch.enable_grad():  # the same ops recording the autograd graph (a training forward)
        x.requires_grad_(True)
        grad_overhead = max(sum(_time(f, min_time) for f in mix) / len(mix), overhead)
        x.requires_grad_(False)
    with torch.no_grad():
        lin = torch.nn.Linear(64, 64, bias=False)
        linear_overhead = _time(lambda: lin(x), min_time)
        q, kv = torch.ones(4, 4, 1, 32), torch.ones(4, 2, 64, 32)
        attn_overhead = _time(lambda: F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True), min_time)
        cache = private_cache_bytes()
        sizes = [8, 32, 64, 128, 256, 512, 1024] if quick else [8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768,
                                                                   1024, 1536, 2048]
        curve, skinny = [], []
        for n in sizes:  # x @ W^T on a 3-D activation as nn.Linear runs it; operands cycle so they start cold
            m = max(n, 64)  # tokens: at least a small batch, as in training and prefill
            copies = max(2, min(64, int(4 * cache // (4 * (m * n + n * n + m * n))) + 1))
            xs = [(torch.randn(1, m, n), torch.randn(n, n)) for _ in range(copies)]
            t = _time(_cycler(xs, lambda a, b: F.linear(a, b)), min_time)
            flops = 2.0 * m * n * n
            curve.append((flops, flops / max(t - linear_overhead, 0.2 * t)))
            # decode: four tokens read the whole weight (memory-bound), weight hot in cache
            v, b, nbytes = torch.randn(4, 1, n), torch.randn(n, n), 4.0 * (n * n + 8 * n)
            t = _time(lambda v=v, b=b: F.linear(v, b), min_time)
            skinny.append((nbytes, nbytes / max(t - linear_overhead, 0.2 * t)))
        mem = []  # element-wise kernels as a model runs them: contiguous, broadcast, strided, reductions, cat
        for kib in ([4, 64, 1024, 16384] if quick else [4, 16, 64, 256, 1024, 4096, 16384]):
            n = kib * 256  # float32 elements
            a, b, r = torch.randn(n // 64, 64), torch.randn(n // 64, 64), torch.randn(n // 64, 1)
            at = torch.randn(64, n // 64).t()  # a transposed (non-contiguous) view
            kinds = (lambda a=a, b=b: a * b, lambda a=a, r=r: a * r, lambda at=at, b=b: at * b, lambda a=a: F.silu(a),
                     lambda a=a: a.mean(-1, keepdim=True), lambda a=a, b=b: torch.cat((a, b), -1))
            t = sum(_time(f, min_time) for f in kinds) / len(kinds)
            nbytes = 3.0 * 4 * n
            mem.append((nbytes, nbytes / max(t - overhead, 0.2 * t)))
        # working-set caps: kernels cycling through buffers that total `ws` bytes (L2 -> L3 -> DRAM)
        stream, mstream = [], []
        for mib in ([1, 16, 128] if quick else [1, 4, 16, 64, 256]):
            ws = mib * 2**20
            n = 2**18  # 1 MiB float32 tensors, in place as optimizers update them: a += b
            bufs = [(torch.randn(n), torch.randn(n)) for _ in range(max(1, ws // (8 * n)))]
            t = _time(_cycler(bufs, lambda a, b: a.add_(b)), min_time)
            stream.append((float(ws), 12.0 * n / max(t - overhead, 0.2 * t)))
            k = 512  # 1 MiB weights read by four tokens
            v = torch.randn(4, 1, k)
            ws_w = [(torch.randn(k, k),) for _ in range(max(1, ws // (4 * k * k)))]
            t = _time(_cycler(ws_w, lambda w, v=v: F.linear(v, w)), min_time)
            mstream.append((float(ws), 4.0 * k * k / max(t - linear_overhead, 0.2 * t)))
        # fused attention (SDPA): seconds per score element over head_dim x length, causal (training, prefill)
        # and one query over a cache (decode, GQA 8 query heads per 2 KV heads)
        attn, attn_table, attn_decode = [], [], []
        for hd in ([16, 64] if quick else [16, 32, 64, 128]):
            for seq in ([64, 256] if quick else [64, 128, 512]):
                qs = torch.randn(1, 8 if quick else 16, seq, hd)
                t = _time(lambda qs=qs: F.scaled_dot_product_attention(qs, qs, qs, is_causal=True), min_time)
                scores = qs.shape[1] * seq * (seq + 1) / 2
                net = max(t - attn_overhead, 0.2 * t)
                attn_table.append((float(hd), (seq + 1) / 2, net / scores))
                attn.append((4.0 * scores * hd, 4.0 * scores * hd / net))
        for hd in ([16, 64] if quick else [16, 64, 128]):
            for ctx in ([64, 512] if quick else [64, 512, 4096]):
                q, kv = torch.randn(4, 8, 1, hd), torch.randn(4, 2, ctx, hd)
                t = _time(lambda q=q, kv=kv: F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True), min_time)
                attn_decode.append((float(hd), float(ctx), max(t - attn_overhead, 0.2 * t) / (4 * 8 * ctx)))
    # attention backward / forward time ratio on a mid shape
    qg = torch.randn(1, 16, 128, 64, requires_grad=True)
    t_f = _time(lambda: F.scaled_dot_product_attention(qg, qg, qg, is_causal=True), min_time)
    t_fb = _time(lambda: F.scaled_dot_product_attention(qg, qg, qg, is_causal=True).sum().backward(), min_time)
    attn_bwd = max((t_fb - t_f) / t_f, 1.0)
    # training overhead per op: a chain of tiny multiplies with autograd, forward + backward; what exceeds
    # the no-grad forward is charged to the two backward kernels each element-wise op gets in the model
    wg = torch.ones(1, requires_grad=True)
    chain = 32

    def fwd_bwd() -> None:
        h = wg
        for _ in range(chain):
            h = h * wg
        h.backward()

    t_fb = _time(fwd_bwd, min_time)
    bwd_overhead = max((t_fb / chain - grad_overhead) / 2, overhead)

    curve, mem, skinny, stream, mstream, attn = (_smooth(c) for c in (curve, mem, skinny, stream, mstream, attn))
    peak = max(r for _, r in curve)
    threads_used = torch.get_num_threads()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16e9
    src = f"measured by `duomind sim calibrate` on {cpu_name()} ({threads_used} torch threads, float32)"
    hw = Hardware(
        name="local", peak_flops={"fp32": peak, "bf16": peak, "fp16": peak}, mem_bw=max(r for _, r in mem),
        mem_bytes=float(ram), intra_bw=10e9, inter_bw=1e9, node_size=1, matmul_eff=1.0,
        attn_eff=1.0, attn_bwd=attn_bwd, eager=True, mem_eff=1.0, link_eff=1.0, op_overhead=overhead,
        bwd_op_overhead=bwd_overhead, grad_op_overhead=grad_overhead,
        matmul_overhead=linear_overhead, attn_overhead=attn_overhead, link_latency=20e-6, matmul_curve=tuple(curve),
        mem_curve=tuple(mem),
        matmul_mem_curve=tuple(skinny), stream_curve=tuple(stream), matmul_stream_curve=tuple(mstream),
        attn_curve=tuple(attn), attn_table=tuple(sorted(attn_table)), attn_decode_table=tuple(sorted(attn_decode)),
        sources={"peak_flops": src + "; the best matmul rate measured (not a datasheet peak)",
                 "matmul_curve": src + "; F.linear (max(n, 64) tokens) x (n x n), operands cycled from beyond L2",
                 "mem_curve": src + "; mean of six element-wise kernels (product, broadcast, strided, SiLU, row "
                                    "mean, cat) counted as 3 passes",
                 "op_overhead": src + "; mean of ten small eager ops (pow, mean, add, rsqrt, mul, cat, slice, "
                                      "neg, silu, transpose+reshape) on a (4, 1, 64) tensor",
                 "grad_op_overhead": src + "; the same ten ops on a tensor that requires grad",
                 "matmul_overhead": src + "; nn.Linear(64, 64) on (4, 1, 64)",
                 "attn_overhead": src + "; SDPA with GQA, one query over 64 keys",
                 "bwd_op_overhead": src + "; autograd chain of one-element multiplies, less the grad-mode forward, "
                                          "per backward kernel",
                 "matmul_mem_curve": src + "; F.linear of 4 tokens on one cache-resident n x n weight",
                 "stream_curve": src + "; in-place a += b cycling through 1 MiB buffers totalling the working set",
                 "matmul_stream_curve": src + "; F.linear of 4 tokens cycling through 1 MiB weights totalling the "
                                              "working set",
                 "attn_curve": src + "; causal SDPA at small-model shapes",
                 "attn_table": src + "; causal SDPA, 16 heads, head_dim 16-128 x length 64-512, per score element",
                 "attn_decode_table": src + "; SDPA of one query (8 heads, GQA over 2) on 64-4096 cached keys",
                 "attn_bwd": src + "; SDPA forward+backward vs forward",
                 "mem_bytes": "physical RAM (sysconf)", "intra_bw": "not applicable (one device)"},
        set_by=f"calibration: {src}")
    out = Path(path) if path else local_profile_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(hw.to_dict(), indent=1))
    return hw
