"""Simulator behaviour: FLOP accounting, parallelism invariants, memory, routing imbalance, serving."""

from __future__ import annotations

import pytest

from duomind.sim.plan import Plan, PlanError
from duomind.sim.presets import MODELS
from duomind.sim.routing import max_load_factor
from duomind.sim.simulate import simulate_infer, simulate_train
from duomind.sim.workload import Shape, attention_ops, block_ops, ffn_ops, model_flops_per_token

GPT = MODELS["gpt3-175b"]
PRO = MODELS["pangu-pro-moe-72b"]


def _matmul_flops(ops):
    return sum(o.flops * o.count for o in ops if o.kind == "matmul")


def test_block_matmul_flops_are_two_per_parameter_per_token():
    arch = MODELS["llama3-8b"]
    s = Shape(tokens=1000, span=512)
    layer_params = arch.attn_params() + 3 * arch.hidden_size * arch.intermediate_size
    assert _matmul_flops(block_ops(arch, s, moe=False)) == pytest.approx(2 * 1000 * layer_params)


def test_tensor_parallel_splits_matmul_flops_evenly():
    arch = MODELS["llama3-70b"]
    one = _matmul_flops(block_ops(arch, Shape(tokens=4096, span=2048), False))
    eight = _matmul_flops(block_ops(arch, Shape(tokens=4096, span=2048, tp=8), False))
    assert eight * 8 == pytest.approx(one)


def test_moe_flops_follow_active_experts():
    s = Shape(tokens=512, span=256)
    pro_ffn = _matmul_flops([o for o in ffn_ops(PRO, s, moe=True) if o.name != "moe.router"])
    active = PRO.top_k * 3 * PRO.hidden_size * PRO.expert_size + 3 * PRO.hidden_size * 4 * PRO.shared_expert_size
    assert pro_ffn == pytest.approx(2 * 512 * active)


def test_model_flops_match_megatron_formula():
    # Narayanan et al. 2021 (arXiv 2104.04473) eq. 3 without recompute: 72 B s l h^2 (1 + s/6h + V/12hl) per step
    s, h, layers, v = 2048, GPT.hidden_size, GPT.num_layers, GPT.vocab_size
    megatron = 72 * s * layers * h**2 * (1 + s / (6 * h) + v / (12 * h * layers))
    assert 3 * s * model_flops_per_token(GPT, s) == pytest.approx(megatron, rel=1e-6)


def test_mla_decode_reads_the_latent_cache():
    ultra = MODELS["pangu-ultra-moe-718b"]
    per_token = ultra.kv_bytes_per_token(2)
    assert per_token == ultra.num_layers * (512 + 64) * 2
    s = Shape(tokens=8, span=4096, kv_read=4096, seqs=8)
    core = [o for o in attention_ops(ultra, s) if o.name == "attn.core"][0]
    assert core.bytes >= 8 * 4096 * (512 + 64) * 2  # every sequence reads its cached latents


def test_breakdown_sums_to_step_and_throughput_is_consistent():
    r = simulate_train("gpt3-175b", Plan(tp=8, pp=8, dp=4, vpp=2, seq_len=2048, global_batch=256), "a100")
    assert sum(r.breakdown.values()) == pytest.approx(r.step_time)
    assert r.tokens_per_s == pytest.approx(256 * 2048 / r.step_time)
    assert 0 < r.mfu < 1
    assert r.devices == 256


def test_doubling_dp_halves_sharded_state_under_zero():
    p = Plan(tp=8, pp=4, dp=4, zero=2, seq_len=2048, global_batch=64)
    a, b = (simulate_train(GPT, p.replace(dp=d), "h100").memory for d in (4, 8))
    assert b["grads"] == pytest.approx(a["grads"] / 2)
    assert b["optimizer"] == pytest.approx(a["optimizer"] / 2)
    assert b["weights"] == pytest.approx(a["weights"])  # ZeRO-2 keeps full weights
    z1 = simulate_train(GPT, p.replace(zero=1), "h100").memory
    assert z1["grads"] == pytest.approx(a["grads"] * 4)  # ZeRO-1 keeps full gradients
    z3 = simulate_train(GPT, p.replace(zero=3), "h100")
    assert z3.memory["weights"] == pytest.approx(a["weights"] / 4)
    assert z3.breakdown["dp_comm"] > simulate_train(GPT, p, "h100").breakdown["dp_comm"]  # gathers per micro-batch


def test_recompute_trades_time_for_activation_memory():
    p = Plan(tp=8, pp=8, seq_len=2048, global_batch=64, flash_attention=False)
    runs = {rc: simulate_train(GPT, p.replace(recompute=rc), "a100", check_memory=False)
            for rc in ("none", "selective", "full")}
    acts = [runs[rc].memory["activations"] for rc in ("none", "selective", "full")]
    times = [runs[rc].step_time for rc in ("none", "selective", "full")]
    assert acts[0] > acts[1] > acts[2]
    assert times[0] < times[1] < times[2]
    assert runs["full"].mfu < runs["none"].mfu  # MFU does not count recomputed work


def test_pipeline_bubble_follows_1f1b_and_interleaving():
    base = Plan(tp=8, pp=8, dp=1, seq_len=2048, global_batch=64, pp_layout="even")
    plain = simulate_train(GPT, base, "a100")
    inter = simulate_train(GPT, base.replace(vpp=2), "a100")
    per_mb = (plain.step_time - plain.breakdown["pp_bubble"] - plain.breakdown["dp_comm"]
              - plain.breakdown["optimizer"] - plain.breakdown["pp_comm"] - plain.breakdown["pp_imbalance"]) / 64
    assert plain.breakdown["pp_bubble"] == pytest.approx(7 * per_mb, rel=0.02)  # (pp - 1) micro-batch slots
    assert inter.breakdown["pp_bubble"] == pytest.approx(plain.breakdown["pp_bubble"] / 2, rel=0.01)
    more = simulate_train(GPT, base.replace(global_batch=256), "a100")
    assert more.details["bubble_fraction"] < plain.details["bubble_fraction"]


def test_overlap_hides_communication():
    p = Plan(tp=8, pp=4, dp=8, seq_len=4096, global_batch=256, overlap=())
    hidden = simulate_train(GPT, p.replace(overlap=("dp", "tp", "pp")), "h100")
    exposed = simulate_train(GPT, p, "h100")
    assert hidden.step_time < exposed.step_time
    assert hidden.breakdown["dp_comm"] <= exposed.breakdown["dp_comm"]


def test_memory_overflow_is_reported_with_reason_not_a_number():
    with pytest.raises(PlanError, match=r"memory overflow: needs .* GB per device .* but h100 has 80 GB"):
        simulate_train("gpt3-175b", Plan(tp=1, pp=1, dp=8), "h100")
    with pytest.raises(PlanError, match="memory overflow"):
        simulate_infer("llama3-70b", Plan(tp=1, batch=8), "h100")


def test_context_parallel_splits_tokens_and_adds_ring_traffic():
    p = Plan(tp=8, pp=1, dp=2, seq_len=32768, global_batch=16, recompute="full", overlap=("dp",))
    cp = simulate_train("llama3-70b", p.replace(dp=1, cp=2), "h100", check_memory=False)
    assert cp.breakdown.get("cp_comm", 0) > 0
    no = simulate_train("llama3-70b", p, "h100", check_memory=False)
    assert cp.memory["activations"] < no.memory["activations"]


def test_moge_is_exactly_balanced_and_moe_is_not():
    assert max_load_factor(64, 8, 8, 4096, skew=1.0, groups=8) == 1.0
    moe = [max_load_factor(64, 8, 8, 4096, skew=s) for s in (0.0, 0.5, 1.0)]
    assert 1.0 < moe[0] < moe[1] < moe[2]
    # a group split over two devices: quota per group, random inside it, still better than plain top-k
    split = max_load_factor(64, 8, 16, 4096, skew=1.0, groups=8)
    assert 1.0 < split < max_load_factor(64, 8, 16, 4096, skew=1.0)
    assert max_load_factor(64, 8, 8, 4096, skew=1.0, seed=3) == max_load_factor(64, 8, 8, 4096, skew=1.0, seed=3)


def test_moge_beats_moe_at_ep8_with_skew():
    p = Plan(tp=1, pp=4, dp=8, ep=8, seq_len=4096, global_batch=256, router_skew=1.0, recompute="full")
    moge = simulate_train(PRO, p, "910b")
    moe = simulate_train(MODELS["pro-moe-72b-topk"], p, "910b")
    assert moge.details["ep_load_factor"] == 1.0 and "ep_imbalance" not in moge.breakdown
    assert moe.details["ep_load_factor"] > 1.1 and moe.breakdown["ep_imbalance"] > 0
    assert moe.step_time > moge.step_time
    even = simulate_train(MODELS["pro-moe-72b-topk"], p.replace(router_skew=0.0), "910b")
    assert even.step_time < moe.step_time


def test_serving_decode_is_memory_bound_and_grows_with_context():
    p = Plan(tp=8, batch=32, prompt_len=1024, gen_len=512)
    short = simulate_infer("llama3-70b", p.replace(context_len=512), "h100")
    long = simulate_infer("llama3-70b", p.replace(context_len=8192), "h100")
    assert long.step_time > short.step_time
    assert long.memory["kv_cache"] == pytest.approx(short.memory["kv_cache"] * 16)
    int8 = simulate_infer("llama3-70b", p.replace(context_len=512, weight_dtype="int8"), "h100")
    assert int8.step_time < short.step_time and int8.memory["weights"] == pytest.approx(short.memory["weights"] / 2)
    assert short.tokens_per_s == pytest.approx(32 / short.step_time)
    big = simulate_infer("llama3-70b", p.replace(batch=128, context_len=512), "h100")
    assert big.tokens_per_s > short.tokens_per_s  # batching amortises the weight reads


def test_serving_moe_reads_only_touched_experts():
    small = simulate_infer(PRO, Plan(tp=4, ep=4, batch=1, prompt_len=128, gen_len=2), "800i-a2")
    large = simulate_infer(PRO, Plan(tp=4, ep=4, batch=256, prompt_len=128, gen_len=2), "800i-a2")
    assert large.step_time / 256 < small.step_time  # more tokens share each expert's weight read
