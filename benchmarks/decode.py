"""Decode speed: DuoMind's KV-cache loop vs Hugging Face `generate` on identical weights.

A random Llama of the bench-base size is built with transformers, saved, converted with
`duomind.convert` (logits checked equal), then both generate the same greedy continuations at batch 1
and 8. Runs alternate between the contenders so machine noise hits both alike.

    python benchmarks/decode.py            # full: benchmarks/results/decode.{json,png}
    python benchmarks/decode.py --quick
"""

from __future__ import annotations

import sys
import tempfile

import _common


def build(quick: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from duomind.config import ModelConfig
    from duomind.convert import load_hf_model_as_duomind

    size = ModelConfig.from_preset("tiny" if quick else "base-20m")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=size.vocab_size, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads, max_position_embeddings=1024, attn_implementation="sdpa",
        pad_token_id=0, eos_token_id=None, bos_token_id=None)).eval()
    path = tempfile.mkdtemp(prefix="decode-bench-")
    hf.save_pretrained(path)
    ours = load_hf_model_as_duomind(path)
    x = torch.randint(0, size.vocab_size, (2, 16))
    with torch.no_grad():
        diff = (ours(x).logits - hf(x).logits).abs().max().item()
    assert diff < 1e-4, f"converted logits differ by {diff}"
    return hf, ours, size, diff


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 8, 2
    out = _common.out_dir(args)

    import torch

    from duomind.generate import generate

    hf, ours, size, diff = build(args.quick)
    results, equal = {}, True
    for batch in (1, 8):
        torch.manual_seed(batch)
        prompts = torch.randint(1, size.vocab_size, (batch, args.prompt_len))
        n = args.new_tokens

        def run_ours(prompts=prompts, n=n):
            return generate(ours, prompts.tolist(), max_new_tokens=n)

        def run_hf(prompts=prompts, n=n):
            with torch.inference_mode():
                return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False)

        equal &= run_hf()[:, args.prompt_len:].tolist() == run_ours()
        times = {"duomind": [], "hf": []}
        for _ in range(args.repeats):  # alternate: noise hits both contenders alike
            times["duomind"] += _common.timed(run_ours, 1, warmup=0)
            times["hf"] += _common.timed(run_hf, 1, warmup=0)
        row = {name: {"tokens_per_s": batch * n / _common.stats(t)["median"], "seconds": _common.stats(t)}
               for name, t in times.items()}
        row["speedup"] = row["duomind"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
        results[str(batch)] = row
        print(f"batch {batch}: duomind {row['duomind']['tokens_per_s']:8.1f} tok/s   hf {row['hf']['tokens_per_s']:8.1f}"
              f" tok/s   speedup {row['speedup']:.2f}x")

    result = {
        "setup": {"model": f"random Llama, {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M params "
                  f"({size.num_hidden_layers} layers, d={size.hidden_size})", "prompt_len": args.prompt_len,
                  "new_tokens": args.new_tokens, "repeats": args.repeats, "dtype": "float32",
                  "converted_logit_max_diff": diff},
        "batches": results,
        "greedy_outputs_equal": equal,
        "speedup_vs_hf_batch1": results["1"]["speedup"],
        "speedup_vs_hf_batch8": results["8"]["speedup"],
        "goal": "speedup_vs_hf_batch1 >= 2.0",
    }
    _common.write("decode", result, out)

    plt = _common.figure()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    xs = range(len(results))
    for i, name in enumerate(("duomind", "hf")):
        vals = [results[b][name]["tokens_per_s"] for b in results]
        ax.bar([x + 0.38 * i for x in xs], vals, width=0.38, label=name)
    ax.set_xticks([x + 0.19 for x in xs], [f"batch {b}" for b in results])
    ax.set_ylabel("tokens / s (median)")
    ax.set_title(f"greedy decode, {result['setup']['model']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "decode.png")


if __name__ == "__main__":
    sys.exit(main())
