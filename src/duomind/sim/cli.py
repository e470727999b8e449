"""`duomind sim ...` verbs: calibrate this machine, simulate training or serving, search configurations.

Each verb is a thin call into `duomind.sim`; typed parameters become flags (jsonargparse), `--config x.yaml`
gives defaults. Impossible plans and unknown names exit with the reason (in `--json` mode as
{"feasible": false, "reasons": [...]}), never with a made-up number.
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any

from duomind.sim.plan import PlanError


def _emit_infeasible(err: PlanError, as_json: bool) -> None:
    if as_json:
        print(_json.dumps({"feasible": False, "reasons": err.reasons}, indent=1))
        raise SystemExit(1)
    raise err


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def calibrate(out: str | None = None, quick: bool = False, threads: int = 1, json: bool = False) -> None:
    """Measure this machine (matmul FLOP/s by size, memory bandwidth, per-op overheads) into the `local` profile.

    Args:
        out: Profile JSON to write (default: ~/.cache/duomind/sim_local.json, or $DUOMIND_SIM_LOCAL).
        quick: Fewer sizes and shorter timings (seconds).
        threads: torch threads to measure with (1 = single core, the steadiest on a shared machine; 0 = default).
        json: Print the profile as JSON.
    """
    from duomind.sim.calibrate import calibrate as run
    from duomind.sim.hardware import local_profile_path

    hw = run(out, quick=quick, threads=threads)
    if json:
        print(_json.dumps(hw.to_dict(), indent=1))
        return
    path = out or local_profile_path()
    print(f"wrote {path}\n  best matmul {hw.peak('fp32') / 1e9:.1f} GFLOP/s, memory {hw.mem_bw / 1e9:.1f} GB/s (best), "
          f"per-op overhead {hw.op_overhead * 1e6:.1f} us (linear {hw.matmul_overhead * 1e6:.1f} us, "
          f"backward {hw.bwd_op_overhead * 1e6:.1f} us)\n  use it with --hardware local")


def train(model: str, hardware: str = "h100", plan: str | None = None, dp: int | None = None,
          tp: int | None = None, pp: int | None = None, vpp: int | None = None, ep: int | None = None,
          cp: int | None = None, zero: int | None = None, micro_batch: int | None = None,
          global_batch: int | None = None, seq_len: int | None = None, recompute: str | None = None,
          overlap: str | None = None, dtype: str | None = None, pp_layout: str | None = None,
          router_skew: float | None = None, json: bool = False, plot: str | None = None) -> None:
    """Simulate one training step: time breakdown, tokens/s, MFU and memory per device.

    Args:
        model: Preset name (see duomind.sim.presets), a YAML/JSON file of model fields, or a DuoMind / Hugging
            Face config.json (or checkpoint directory).
        hardware: Profile name (a100, h100, h200, 910b, 800i-a2, 300i-duo, local) or a YAML/JSON profile.
        plan: YAML/JSON plan file; the flags below override it.
        dp: Data-parallel replicas.
        tp: Tensor-parallel degree.
        pp: Pipeline stages.
        vpp: Virtual stages per device (interleaved 1F1B).
        ep: Expert-parallel degree.
        cp: Context-parallel degree.
        zero: ZeRO stage 0-3.
        micro_batch: Sequences per micro-batch.
        global_batch: Sequences per step (0: 4 micro-batches per stage per replica).
        seq_len: Tokens per sequence.
        recompute: none, selective or full.
        overlap: Comma list of communications hidden behind compute (dp,tp,ep,cp,pp).
        dtype: Compute dtype (bf16, fp16, fp32, fp8).
        pp_layout: even or balanced.
        router_skew: Expert-popularity spread of the router (MoE imbalance); 0 = uniform.
        json: Print the result as JSON.
        plot: Write a PNG breakdown chart here.
    """
    from duomind.sim.plan import load_plan
    from duomind.sim.simulate import simulate_train

    p = load_plan(plan, **_overrides(dp=dp, tp=tp, pp=pp, vpp=vpp, ep=ep, cp=cp, zero=zero, micro_batch=micro_batch,
                                     global_batch=global_batch, seq_len=seq_len, recompute=recompute, overlap=overlap,
                                     dtype=dtype, pp_layout=pp_layout, router_skew=router_skew))
    try:
        r = simulate_train(model, p, hardware)
    except PlanError as err:
        _emit_infeasible(err, json)
    _finish(r, json, plot)


def infer(model: str, hardware: str = "h100", plan: str | None = None, dp: int | None = None,
          tp: int | None = None, pp: int | None = None, ep: int | None = None, batch: int | None = None,
          prompt_len: int | None = None, gen_len: int | None = None, context_len: int | None = None,
          dtype: str | None = None, weight_dtype: str | None = None, kv_dtype: str | None = None,
          router_skew: float | None = None, json: bool = False, plot: str | None = None) -> None:
    """Simulate serving: prefill time (TTFT), decode step (TPOT), generated tokens/s, memory per device.

    Args:
        model: Preset name, YAML/JSON model file, or DuoMind / Hugging Face config.json (or checkpoint dir).
        hardware: Profile name or YAML/JSON profile.
        plan: YAML/JSON plan file; the flags below override it.
        dp: Model replicas.
        tp: Tensor-parallel degree per replica.
        pp: Pipeline stages per replica.
        ep: Expert-parallel degree (carved from dp, or spanning tp groups).
        batch: Concurrent sequences per replica.
        prompt_len: Prompt tokens per sequence.
        gen_len: Generated tokens per sequence.
        context_len: Mean KV length during decode (0: prompt_len + gen_len / 2).
        dtype: Compute dtype (bf16, fp16, int8 for W8A8, fp8).
        weight_dtype: Stored weight dtype (int8, int4, ...).
        kv_dtype: KV-cache dtype.
        router_skew: Expert-popularity spread of the router; 0 = uniform.
        json: Print the result as JSON.
        plot: Write a PNG breakdown chart here.
    """
    from duomind.sim.plan import load_plan
    from duomind.sim.simulate import simulate_infer

    p = load_plan(plan, **_overrides(dp=dp, tp=tp, pp=pp, ep=ep, batch=batch, prompt_len=prompt_len, gen_len=gen_len,
                                     context_len=context_len, dtype=dtype, weight_dtype=weight_dtype,
                                     kv_dtype=kv_dtype, router_skew=router_skew))
    try:
        r = simulate_infer(model, p, hardware)
    except PlanError as err:
        _emit_infeasible(err, json)
    _finish(r, json, plot)


def _finish(r, as_json: bool, plot: str | None) -> None:
    from duomind.sim.report import format_result, plot_breakdown

    if plot:
        plot_breakdown(r, plot)
    if as_json:
        print(_json.dumps(r.to_dict(), indent=1))
    else:
        print(format_result(r))
        if plot:
            print(f"  chart: {plot}")


def search(base: str = "pangu-pro-moe-72b", hardware: str = "910b", devices: int = 64, mode: str = "train",
           vary: dict[str, list[Any]] | None = None, plan: dict[str, Any] | None = None,
           degrees: dict[str, list[Any]] | None = None, max_total_params: float | None = None,
           min_total_params: float | None = None, max_active_params: float | None = None,
           max_memory_gb: float | None = None, size_metric: str = "total", top: int = 20, json: bool = False,
           plot: str | None = None) -> None:
    """Search model shapes x parallel plans under constraints; print (and plot) the throughput-vs-size front.

    Args:
        base: Architecture the variations start from (preset, model file or config.json).
        hardware: Profile name or file.
        devices: Devices every plan uses.
        mode: train or infer.
        vary: Model field -> values, e.g. {num_layers: [48, 56], num_experts: [64, 128]}.
        plan: Fixed plan fields, e.g. {seq_len: 4096, global_batch: 1024, router_skew: 0.5}.
        degrees: Plan field -> values to search (default tp, pp, ep, micro_batch, recompute).
        max_total_params: Upper limit on total parameters.
        min_total_params: Lower limit on total parameters.
        max_active_params: Upper limit on active parameters per token.
        max_memory_gb: Memory per device (default: the hardware's).
        size_metric: total or active: the size axis of the front.
        top: Front rows to print.
        json: Print the whole result as JSON.
        plot: Write the front as a PNG here.
    """
    from duomind.sim.report import format_search, plot_search
    from duomind.sim.search import search as run

    s = run(base, hardware, devices, mode, vary, plan, degrees, max_total_params, min_total_params, max_active_params,
            max_memory_gb, size_metric)
    if plot:
        plot_search(s, plot)
    if json:
        print(_json.dumps(s.to_dict(), indent=1))
        return
    print(format_search(s, top))
    if plot:
        print(f"  chart: {plot}")
    sys.stdout.flush()
