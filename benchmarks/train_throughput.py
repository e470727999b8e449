"""Training throughput: a DuoMind training step vs a plain HF `LlamaForCausalLM` step of the same size.

Both models hold identical weights (converted), take the same batch, and run forward + loss + backward
+ AdamW. Steps alternate between the contenders; the ratio of median step times is reported.

    python benchmarks/train_throughput.py            # benchmarks/results/train_throughput.{json,png}
    python benchmarks/train_throughput.py --quick
"""

from __future__ import annotations

import sys

import _common
from decode import build


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    if args.quick:
        args.batch, args.seq_len, args.steps = 2, 32, 2
    out = _common.out_dir(args)

    import torch

    from duomind.train.loop import token_losses

    hf, ours, size, _ = build(args.quick)
    hf.train()
    ours.train()
    torch.manual_seed(0)
    x = torch.randint(0, size.vocab_size, (args.batch, args.seq_len))
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in (("duomind", ours), ("hf", hf))}

    def step_ours():
        ce, mask = token_losses(ours(x).logits, x)
        (ce / mask.sum()).backward()
        opts["duomind"].step()
        opts["duomind"].zero_grad(set_to_none=True)

    def step_hf():
        hf(input_ids=x, labels=x).loss.backward()
        opts["hf"].step()
        opts["hf"].zero_grad(set_to_none=True)

    step_ours(), step_hf()  # warm-up: allocate optimizer state
    times = {"duomind": [], "hf": []}
    steps = {"duomind": step_ours, "hf": step_hf}
    for i in range(args.steps):  # alternate, and swap who goes first each round: no order bias
        for name in (("duomind", "hf") if i % 2 == 0 else ("hf", "duomind")):
            times[name] += _common.timed(steps[name], 1, warmup=0)
    tokens = args.batch * args.seq_len
    rows = {name: {"tokens_per_s": tokens / _common.stats(t)["median"], "step_seconds": _common.stats(t)}
            for name, t in times.items()}
    speedup = rows["duomind"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]
    print(f"duomind {rows['duomind']['tokens_per_s']:8.0f} tok/s   hf {rows['hf']['tokens_per_s']:8.0f} tok/s"
          f"   speedup {speedup:.2f}x")
    result = {"setup": {"model": f"Llama-shaped, {sum(q.numel() for q in ours.parameters()) / 1e6:.1f}M params",
                        "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "dtype": "float32",
                        "step": "forward + loss + backward + AdamW"},
              "contenders": rows, "speedup_vs_hf": speedup, "goal": "speedup_vs_hf >= 1.0"}
    _common.write("train_throughput", result, out)

    plt = _common.figure()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for i, t in enumerate(times.values()):
        ax.boxplot(t, positions=[i], widths=0.5)
    ax.set_xticks([0, 1], list(times))
    ax.set_ylabel("seconds per training step")
    ax.set_title(f"{result['setup']['model']}, batch {args.batch} x {args.seq_len}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "train_throughput.png")


if __name__ == "__main__":
    sys.exit(main())
