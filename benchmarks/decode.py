"""Decode speed: DuoMind's KV-cache loop vs Hugging Face `generate` on identical weights.

A random Llama of each size is built with transformers, saved, converted with `duomind.convert` (logits
checked equal), then both generate the same greedy continuations at batch 1 and 8. Runs alternate
between the contenders so machine noise hits both alike.

At batch 1 on a CPU the step is bounded below by reading every weight once (a matrix-vector product
per projection). The benchmark measures that floor (the model's own linear layers alone, per token) so
the report separates what a decode loop can remove (the overhead above the floor) from what it cannot.

    python benchmarks/decode.py            # full: benchmarks/results/decode.{json,png}
    python benchmarks/decode.py --quick
"""

from __future__ import annotations

import sys

import _common

SIZES = {"small": "demo", "base": "base-20m"}  # label -> duomind.config preset


def build(quick: bool, preset: str | None = None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from duomind.config import ModelConfig
    from duomind.convert import load_hf_model_as_duomind

    size = ModelConfig.from_preset("tiny" if quick else (preset or "base-20m"))
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=size.vocab_size, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads, max_position_embeddings=1024, attn_implementation="sdpa",
        pad_token_id=0, eos_token_id=None, bos_token_id=None)).eval()
    path = str(_common.scratch("decode-bench-"))
    hf.save_pretrained(path)
    ours = load_hf_model_as_duomind(path)
    x = torch.randint(0, size.vocab_size, (2, 16))
    with torch.no_grad():
        diff = (ours(x).logits - hf(x).logits).abs().max().item()
    assert diff < 1e-4, f"converted logits differ by {diff}"
    return hf, ours, size, diff


def matmul_floor(model, batch: int):
    """A function timing one pass of the model's linear layers alone: the weight-reading floor of a step."""
    import time

    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, 1, m.in_features) for m in linears]

    def once() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for m, x in zip(linears, inputs):
                m(x)
            return time.perf_counter() - t0

    return once


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    sizes = dict(SIZES)
    if args.quick:
        args.new_tokens, args.repeats, sizes = 8, 2, {"base": "tiny"}
    out = _common.out_dir(args)

    import torch

    from duomind.generate import generate

    results, equal, setups = {}, True, {}
    for label, preset in sizes.items():
        hf, ours, size, diff = build(args.quick, preset)
        setups[label] = {"preset": preset, "params_m": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                         "layers": size.num_hidden_layers, "hidden": size.hidden_size,
                         "converted_logit_max_diff": diff}
        for batch in (1, 8):
            torch.manual_seed(batch)
            prompts = torch.randint(1, size.vocab_size, (batch, args.prompt_len))
            n = args.new_tokens

            def run_ours(prompts=prompts, n=n, ours=ours):
                return generate(ours, prompts.tolist(), max_new_tokens=n)

            def run_hf(prompts=prompts, n=n, hf=hf):
                with torch.inference_mode():
                    return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False)

            equal &= run_hf()[:, args.prompt_len:].tolist() == run_ours()
            times, floors, floor_pass = {"duomind": [], "hf": []}, [], matmul_floor(ours, batch)
            runs = {"duomind": run_ours, "hf": run_hf}
            for i in range(args.repeats):  # alternate (the floor too), swapping who goes first: no order bias
                for name in (("duomind", "hf") if i % 2 == 0 else ("hf", "duomind")):
                    times[name] += _common.timed(runs[name], 1, warmup=0)
                floors += [floor_pass() for _ in range(n)]
            floor = _common.stats(floors)["median"]
            row = {"matmul_floor_ms_per_step": floor * 1e3}
            for name, t in times.items():
                step = _common.stats(t)["median"] / n
                row[name] = {"tokens_per_s": batch / step, "ms_per_step": step * 1e3,
                             "overhead_ms_per_step": max(step - floor, 0.0) * 1e3, "seconds": _common.stats(t)}
            row["speedup"] = row["duomind"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
            ours_over = row["duomind"]["overhead_ms_per_step"]  # can come out at 0 on a noisy machine: no ratio then
            row["overhead_ratio"] = row["hf"]["overhead_ms_per_step"] / ours_over if ours_over > 0.05 else None
            row["best_possible_speedup"] = row["hf"]["ms_per_step"] / row["matmul_floor_ms_per_step"]
            results[f"{label}/batch{batch}"] = row
            print(f"{label:5s} batch {batch}: duomind {row['duomind']['tokens_per_s']:8.1f} tok/s   "
                  f"hf {row['hf']['tokens_per_s']:8.1f} tok/s   speedup {row['speedup']:.2f}x   "
                  f"(matmul floor {floor * 1e3:.2f} ms/step; overhead hf/ours {row['overhead_ratio'] or float('nan'):.1f}x)")

    result = {
        "setup": {"sizes": setups, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                  "repeats": args.repeats, "dtype": "float32", "model": "random Llama, converted"},
        "runs": results,
        "greedy_outputs_equal": equal,
        "speedup_vs_hf_batch1": results["base/batch1"]["speedup"],
        "speedup_vs_hf_batch8": results["base/batch8"]["speedup"],
        "overhead_ratio_vs_hf_batch1": results["base/batch1"]["overhead_ratio"],
        "best_possible_speedup_batch1": results["base/batch1"]["best_possible_speedup"],
        "goal": "speedup_vs_hf_batch1 >= 2.0",
    }
    if "small/batch1" in results:
        result["speedup_vs_hf_batch1_small"] = results["small/batch1"]["speedup"]
    _common.write("decode", result, out)

    plt = _common.figure()
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=120)
    labels = list(results)
    for i, name in enumerate(("duomind", "hf")):
        ms = [results[k][name]["ms_per_step"] for k in labels]
        ax.bar([x + 0.38 * i for x in range(len(labels))], ms, width=0.38, label=name)
    ax.scatter([x + 0.19 for x in range(len(labels))], [results[k]["matmul_floor_ms_per_step"] for k in labels],
               marker="_", s=600, color="k", zorder=3, label="matmul floor")
    ax.set_xticks([x + 0.19 for x in range(len(labels))],
                  [f"{k}\n{results[k]['speedup']:.2f}x" for k in labels])
    ax.set_ylabel("ms per decode step (median)")
    ax.set_yscale("log")
    ax.set_title("greedy decode, DuoMind loop vs HF generate (same weights, float32, CPU)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "decode.png")


if __name__ == "__main__":
    sys.exit(main())
