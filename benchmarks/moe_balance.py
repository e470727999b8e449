"""Expert balance through training: a small MoE and a small MoGE trained side by side on the same data.

recipes/moe-balance.yaml is trained twice, as written (MoGE: 16 experts in 4 groups, K' = 1) and with
mlp_type: moe (plain top-4 of the same 16 experts): same data, seed, sizes, active experts, balance-loss
weight; neither renormalises. The trainer logs per step the imbalance score IS = (max - min device load) /
tokens with device g holding expert group g (arXiv 2505.21411), the busiest device's load over the mean,
and the loss; at the end each model's loss on held-out data is measured.

    python benchmarks/moe_balance.py --threads 1     # full: benchmarks/results/moe_balance.{json,png}
    python benchmarks/moe_balance.py --quick
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import _common

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "moe-balance.yaml"


def data(quick: bool) -> tuple[Path, Path, Path]:
    """Training corpus, held-out corpus (another seed) and tokenizer, made once and cached."""
    from duomind.tasks.cli import make
    from duomind.tokenizer import train_cli

    root = _common.CACHE / ("moe-balance-quick" if quick else "moe-balance")
    train_dir, eval_dir, tok = root / "data", root / "eval", root / "tokenizer"
    if not (train_dir / "corpus.txt").is_file():
        make(out_dir=str(train_dir), n=300 if quick else 6000, seed=0)
    if not (eval_dir / "corpus.txt").is_file():
        make(out_dir=str(eval_dir), n=100 if quick else 600, seed=1)
    if not (tok / "tokenizer.json").is_file():
        train_cli(str(train_dir / "corpus.txt"), out=str(tok), vocab_size=320 if quick else 1024)
    return train_dir / "corpus.txt", eval_dir / "corpus.txt", tok


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="override the recipe's max_steps")
    args = p.parse_args()
    out = _common.out_dir(args)

    from duomind.config import TrainConfig, from_dict, load_mapping
    from duomind.train import train

    corpus, heldout, tok = data(args.quick)
    recipe = load_mapping(RECIPE)
    recipe.update(data=str(corpus), eval_data=str(heldout), tokenizer=str(tok), progress=False, log_every=1,
                  eval_batches=8, threads=getattr(args, "threads", None))
    if args.quick:
        recipe["model"] = {**recipe["model"], "hidden_size": 64, "num_hidden_layers": 2, "moe_intermediate_size": 32}
        recipe.update(max_steps=4, seq_len=32, global_batch_size=4, micro_batch_size=4, warmup_steps=1, eval_batches=1)
    if args.steps:
        recipe["max_steps"] = args.steps
    recipe["save_every"] = recipe["max_steps"]
    work = _common.scratch("moe-balance-")
    runs: dict[str, list[dict]] = {}
    evals: dict[str, float] = {}
    for kind in ("moge", "moe"):
        cfg = from_dict(TrainConfig, {**recipe, "out_dir": str(work / kind),
                                      "model": {**recipe["model"], "mlp_type": kind}}, RECIPE.name)
        train(cfg)
        rows = [json.loads(line) for line in (work / kind / "metrics.jsonl").read_text().splitlines()]
        runs[kind] = [r for r in rows if "loss" in r]
        evals[kind] = [r["eval_loss"] for r in rows if "eval_loss" in r][-1]
        last = runs[kind][-1]
        print(f"{kind:5s}: final loss {last['loss']:.4f}  held-out loss {evals[kind]:.4f}  "
              f"IS mean {statistics.mean(r['moe_is'] for r in runs[kind]):.4f}  "
              f"IS max {max(r['moe_is_max'] for r in runs[kind]):.4f}")

    tail = max(1, len(runs["moe"]) // 10)  # the final loss: mean of the last 10% of steps (less noisy)

    def final(kind: str) -> float:
        return statistics.mean(r["loss"] for r in runs[kind][-tail:])

    per_step = {kind: {"step": [r["step"] for r in rs], "is_mean": [r["moe_is"] for r in rs],
                       "is_max": [r["moe_is_max"] for r in rs],
                       "max_over_mean": [r["moe_load_max_over_mean"] for r in rs],
                       "loss": [r["loss"] for r in rs], "aux_loss": [r["moe_aux_loss"] for r in rs]}
                for kind, rs in runs.items()}
    model = {k: v for k, v in recipe["model"].items() if k != "mlp_type"}
    result = {
        "setup": {"recipe": RECIPE.name, "model": model, "steps": recipe["max_steps"], "seq_len": recipe["seq_len"],
                  "global_batch_size": recipe["global_batch_size"], "tokens_per_step":
                  recipe["seq_len"] * recipe["global_batch_size"], "devices": model["expert_groups"],
                  "IS": "(max device load - min device load) / tokens, per step, per layer"},
        "per_step": per_step,
        "moge_max_is": max(per_step["moge"]["is_max"]),
        "moe_mean_is": statistics.mean(per_step["moe"]["is_mean"]),
        "moe_min_is": min(per_step["moe"]["is_max"]),
        "moe_mean_max_over_mean_load": statistics.mean(per_step["moe"]["max_over_mean"]),
        "moge_mean_max_over_mean_load": statistics.mean(per_step["moge"]["max_over_mean"]),
        "final_train_loss": {k: final(k) for k in runs},
        "heldout_loss": evals,
        "loss_ratio_moge_over_moe": evals["moge"] / evals["moe"],
        "train_loss_ratio_moge_over_moe": final("moge") / final("moe"),
        "goal": "moge_max_is == 0 at every step, moe IS > 0, loss_ratio_moge_over_moe <= 1.02",
    }
    _common.write("moe_balance", result, out)

    plt = _common.figure()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=120)
    for kind, color in (("moe", "tab:red"), ("moge", "tab:blue")):
        s = per_step[kind]
        axes[0].plot(s["step"], s["is_mean"], color=color, lw=1, label=f"{kind} (mean over layers)")
        axes[0].plot(s["step"], s["is_max"], color=color, lw=0.6, ls=":", label=f"{kind} (worst layer)")
        axes[1].plot(s["step"], s["max_over_mean"], color=color, lw=1, label=kind)
        axes[2].plot(s["step"], s["loss"], color=color, lw=1, label=f"{kind} (held-out {evals[kind]:.3f})")
    axes[0].set_title("imbalance score IS per step", fontsize=9)
    axes[1].set_title(f"busiest device load / mean ({model['expert_groups']} devices)", fontsize=9)
    axes[2].set_title(f"training loss; held-out ratio moge/moe {result['loss_ratio_moge_over_moe']:.3f}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "moe_balance.png")


if __name__ == "__main__":
    sys.exit(main())
