"""MoE layer speed: DuoMind's dropless MoE layer vs the Hugging Face Qwen3-MoE sparse block, same weights.

64 experts, top-8 (no renormalisation), hidden 256, expert width --ffn, float32, forward only (inference),
for T tokens in {1, 8, 64, 512, 4096}. The HF block is taken from a Qwen3MoeForCausalLM, so it runs the
experts implementation transformers picks by default for a loaded model (`grouped_mm` on torch >= 2.9);
its `eager` per-expert loop is timed too. All contenders share the same weight tensors (so none finds its
weights warmer in cache than another), outputs are checked equal (atol 1e-4) at every T, and contenders
alternate inside each repeat, in a shuffled order, so machine noise and position effects hit all alike.

Two references put the numbers in context:
  * the expert-matmul floor: only the matmuls of the experts the tokens actually hit, on pre-gathered rows
    (no routing, sorting or combining). For small T it is the time to read those experts' weights once,
    which no implementation can avoid, so HF time / floor bounds any speed-up;
  * the dense-matmul peak at the largest T: one torch.mm with the same FLOPs as the layer's expert work
    (T*K rows through d -> 3F); fraction_of_matmul_peak = that time / our layer's time.

    python benchmarks/moe_layer.py --threads 1       # full: benchmarks/results/moe_layer.{json,png}
    python benchmarks/moe_layer.py --quick
"""

from __future__ import annotations

import random
import sys

import _common

TOKENS = (1, 8, 64, 512, 4096)


def build(experts: int, hidden: int, ffn: int, top_k: int, seed: int = 0):
    """HF Qwen3-MoE blocks (default and eager experts implementation) and our layer, all with the same weights."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from duomind.moe import MoELayer

    blocks = {}
    for impl in ("default", "eager"):
        kwargs = {} if impl == "default" else {"experts_implementation": "eager"}
        cfg = Qwen3MoeConfig(vocab_size=16, hidden_size=hidden, intermediate_size=ffn, moe_intermediate_size=ffn,
                             num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=False,
                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=hidden // 4, **kwargs)
        torch.manual_seed(seed)
        model = Qwen3MoeForCausalLM(cfg).eval()  # through a PreTrainedModel, as from_pretrained would build it
        blocks[impl] = (model.model.layers[0].mlp, model.config._experts_implementation)
    hf, eager = blocks["default"][0], blocks["eager"][0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    # Every contender reads the very same weight tensors: with separate copies, whichever ran after another
    # contender touching its copy would find it warm in cache (at small T the layer only reads weights).
    eager.gate.weight, eager.experts.gate_up_proj, eager.experts.down_proj = (
        hf.gate.weight, hf.experts.gate_up_proj, hf.experts.down_proj)
    ours = {}
    for impl in ("auto", "loop", "grouped"):
        layer = MoELayer(hidden, experts, top_k, ffn, renormalize=False, impl=impl).eval()
        layer.router.weight, layer.experts.gate_up_proj, layer.experts.down_proj = (
            hf.gate.weight, hf.experts.gate_up_proj, hf.experts.down_proj)
        ours[impl] = layer
    return blocks, ours


def floor_fn(layer, x):
    """The expert matmuls alone for x's routing, inputs pre-gathered: what any implementation must compute."""
    import torch
    import torch.nn.functional as F

    from duomind.moe import sort_by_expert

    with torch.no_grad():
        routing = layer.router(x)
        order, counts = sort_by_expert(routing.experts, layer.num_experts)
        rows = x.index_select(0, order // layer.top_k)
    spans, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            spans.append((layer.experts.gate_up_proj[e], layer.experts.down_proj[e], rows[start:start + n]))
            start += n

    def run():
        for gate_up, down, r in spans:
            h = F.linear(r, gate_up)
            F.linear(h[:, : h.shape[1] // 2], down)  # one (n, F) @ (F, d): the down projection's cost

    return run, int((counts > 0).sum())


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top_k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=256, help="expert width (Qwen3-MoE's moe_intermediate_size)")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed repeats per T (0: 200 at T = 1, 100 up to 64, 20 at 512, 7 above)")
    args = p.parse_args()
    tokens = TOKENS
    if args.quick:
        args.experts, args.top_k, args.hidden, args.ffn, tokens = 8, 2, 32, 32, (1, 8, 64)
    out = _common.out_dir(args)

    import torch

    blocks, ours = build(args.experts, args.hidden, args.ffn, args.top_k)
    hf_impl = blocks["default"][1]
    contenders = {"duomind": ours["auto"], "duomind_loop": ours["loop"], "duomind_grouped": ours["grouped"],
                  f"hf_{hf_impl}": blocks["default"][0], "hf_eager": blocks["eager"][0]}
    hf_name = f"hf_{hf_impl}"
    d, f, k = args.hidden, args.ffn, args.top_k
    times: dict[str, dict[str, dict]] = {}
    max_diff, floors, hit = 0.0, {}, {}
    rng = random.Random(0)
    for T in tokens:
        torch.manual_seed(T)
        x = torch.randn(T, d)
        with torch.inference_mode():
            ref = blocks["default"][0](x[None])[0]
            for name, mod in contenders.items():
                y = mod(x[None])[0] if name.startswith("hf") else mod(x)
                max_diff = max(max_diff, float((y - ref).abs().max()))
        floor_run, hit[T] = floor_fn(ours["loop"], x)
        reps = args.repeats or (200 if T == 1 else 100 if T <= 64 else 20 if T <= 512 else 7)
        if args.quick:
            reps = 3
        with torch.inference_mode():
            calls = {name: (lambda m=mod, x=x: m(x[None])) if name.startswith("hf") else (lambda m=mod, x=x: m(x))
                     for name, mod in contenders.items()}
            calls["floor"] = floor_run
            if T == tokens[-1]:  # the dense-matmul peak: same FLOPs as the experts' work, one matmul
                a, b = torch.randn(T * args.top_k, args.hidden), torch.randn(args.hidden, 3 * args.ffn)
                calls["dense_matmul"] = lambda a=a, b=b: torch.mm(a, b)
            runs = {name: [] for name in calls}
            for fn in calls.values():
                fn()  # warm-up
            order = list(calls)
            for _ in range(reps):  # interleaved, in a fresh order each time: the call after a different
                rng.shuffle(order)  # contender pays for cold caches and branch predictors, so no one always goes first
                for name in order:
                    runs[name] += _common.timed(calls[name], 1, warmup=0)
        times[str(T)] = {name: _common.stats(v) for name, v in runs.items()}
        floors[str(T)] = times[str(T)]["floor"]["median"]
        row = times[str(T)]
        print(f"T={T:5d}: " + "  ".join(f"{n} {row[n]['median'] * 1e3:8.3f} ms" for n in runs)
              + f"   speedup vs {hf_name} {row[hf_name]['median'] / row['duomind']['median']:.2f}x")

    T = tokens[-1]
    mm = times[str(T)].pop("dense_matmul")["median"]
    flops = 2 * T * k * d * 3 * f
    ours_t = times[str(T)]["duomind"]["median"]

    def speedups(name: str) -> dict[str, float]:
        return {t: times[t][name]["median"] / times[t]["duomind"]["median"] for t in times}

    result = {
        "setup": {"experts": args.experts, "top_k": k, "hidden": d, "expert_ffn": f, "dtype": "float32",
                  "hf_block": "Qwen3MoeSparseMoeBlock (from Qwen3MoeForCausalLM)", "hf_default_impl": hf_impl,
                  "norm_topk_prob": False, "tokens": list(tokens)},
        "times_s": times,
        "outputs_equal": max_diff < 1e-4,
        "max_abs_diff": max_diff,
        "speedup_vs_hf": speedups(hf_name),
        "speedup_vs_hf_eager": speedups("hf_eager"),
        "speedup_loop_over_grouped": {t: times[t]["duomind_grouped"]["median"] / times[t]["duomind_loop"]["median"]
                                      for t in times},
        "best_possible_speedup_vs_hf": {t: times[t][hf_name]["median"] / floors[t] for t in times},
        "experts_hit": {str(t): n for t, n in hit.items()},
        "dense_matmul_s": mm,
        "fraction_of_matmul_peak": mm / ours_t,
        "achieved_gflops": flops / ours_t / 1e9,
        "matmul_gflops": flops / mm / 1e9,
        "goal": "speedup_vs_hf >= 3 for T <= 64, >= 1.2 at T = 512; fraction_of_matmul_peak >= 0.8 at T = 4096",
    }
    small = [t for t in ("1", "8", "64") if t in times]
    result["min_speedup_vs_hf_decode"] = min(result["speedup_vs_hf"][t] for t in small)
    if "512" in times:
        result["speedup_vs_hf_t512"] = result["speedup_vs_hf"]["512"]
    _common.write("moe_layer", result, out)

    plt = _common.figure()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    ts = [int(t) for t in times]
    for name in [*contenders, "floor"]:
        per_tok = [times[str(t)][name]["median"] / t * 1e6 for t in ts]
        style = dict(ls="--", color="k") if name == "floor" else {}
        ax.plot(ts, per_tok, "o-", ms=3, label="expert-matmul floor" if name == "floor" else name, **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens T")
    ax.set_ylabel("µs per token (median)")
    ax.set_title(f"MoE layer forward: {args.experts} experts, top-{k}, d={d}, F={f}, fp32", fontsize=9)
    ax.legend(fontsize=7)
    xs = range(len(ts))
    for i, (name, key) in enumerate(((hf_name, "speedup_vs_hf"), ("hf_eager", "speedup_vs_hf_eager"))):
        bx.bar([x + 0.38 * i for x in xs], [result[key][str(t)] for t in ts], width=0.38, label=f"vs {name}")
    bx.scatter([x + 0.19 for x in xs], [result["best_possible_speedup_vs_hf"][str(t)] for t in ts], marker="_",
               s=500, color="k", zorder=3, label=f"{hf_name} / floor (upper bound)")
    bx.axhline(1.0, color="grey", lw=0.8)
    bx.set_xticks([x + 0.19 for x in xs], [str(t) for t in ts])
    bx.set_xlabel("tokens T")
    bx.set_ylabel("speed-up of DuoMind")
    bx.set_title(f"fraction of dense-matmul peak at T={T}: {result['fraction_of_matmul_peak']:.2f}", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "moe_layer.png")


if __name__ == "__main__":
    sys.exit(main())
