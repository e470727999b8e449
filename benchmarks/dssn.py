"""Loss spikes of deep, narrow models: pre-norm vs sandwich vs depth-scaled sandwich norm (Pangu Ultra).

Reproduces the claim of arXiv 2504.07866 at small scale: the same data, seed and aggressive learning rate
for every variant (pre / sandwich / dssn x normal / tiny init); count loss spikes (loss > 1.5x its running
median over the previous 50 steps), gradient-norm spikes (> 3x its running median) and the final loss.

    python benchmarks/dssn.py            # full: writes benchmarks/results/dssn.{json,png}
    python benchmarks/dssn.py --quick    # seconds, temp dir
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import _common

VARIANTS = [(norm, init) for norm in ("pre", "sandwich", "dssn") for init in ("normal", "tiny")]


def spikes(values: list[float], factor: float, window: int = 50) -> int:
    """Steps whose value exceeds `factor` x the median of the previous `window` values."""
    count = 0
    for i in range(window // 5, len(values)):
        past = values[max(0, i - window):i]
        if values[i] > factor * statistics.median(past):
            count += 1
    return count


def make_data(directory: Path, n: int) -> tuple[Path, Path]:
    from duomind.tasks import generate
    from duomind.tasks.formats import corpus_text
    from duomind.tokenizer import train_tokenizer

    records = generate(["add", "mul", "arith", "word", "sequence"], n=n, seed=0)
    corpus = directory / "corpus.txt"
    corpus.write_text(corpus_text(records, seed=0))
    tok = directory / "tok"
    train_tokenizer(corpus.read_text().split("\n\n"), vocab_size=384).save_pretrained(tok)
    return corpus, tok


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()
    if args.quick:
        args.layers, args.hidden, args.steps = 4, 32, 12
    out = _common.out_dir(args)

    from duomind.config import TrainConfig
    from duomind.train.loop import train

    work = _common.scratch("dssn-")
    corpus, tok = make_data(work, 400 if args.quick else 4000)
    model = dict(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=args.hidden * 3, tie_word_embeddings=False,
                 max_position_embeddings=128)
    curves, rows = {}, []
    for norm, init in VARIANTS:
        name = f"{norm}+{init}"
        cfg = TrainConfig(out_dir=str(work / name), data=str(corpus), tokenizer=str(tok), model_preset="tiny",
                          model={**model, "norm_style": norm, "init": init}, seq_len=64, global_batch_size=16,
                          micro_batch_size=16, max_steps=args.steps, lr=args.lr, min_lr=args.lr / 10,
                          warmup_steps=max(args.steps // 30, 1), grad_clip=1.0, weight_decay=0.1, seed=0,
                          log_every=1, save_every=10**9, progress=False, threads=args.threads)
        t0 = time.perf_counter()
        diverged = None
        try:
            train(cfg)
        except Exception as err:  # a NaN run is a result, not a crash of the benchmark
            diverged = str(err).split(";")[0]
        log = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
        loss = [r["loss"] for r in log if "loss" in r]
        gnorm = [r["grad_norm"] for r in log if "grad_norm" in r]
        curves[name] = {"loss": loss, "grad_norm": gnorm}
        final = statistics.mean(loss[-max(len(loss) // 10, 1):]) if loss else float("nan")
        row = {"variant": name, "loss_spikes": spikes(loss, 1.5), "grad_norm_spikes": spikes(gnorm, 3.0),
               "final_loss": final, "max_grad_norm": max(gnorm) if gnorm else None, "diverged": diverged,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{name:16s} loss spikes {row['loss_spikes']:3d}  grad spikes {row['grad_norm_spikes']:3d}  "
              f"final loss {final:.4f}  {row['seconds']:.0f}s" + (f"  DIVERGED: {diverged}" if diverged else ""))

    by = {r["variant"]: r for r in rows}
    best = min(rows, key=lambda r: (r["loss_spikes"], r["final_loss"]))
    result = {
        "setup": {"layers": args.layers, "hidden": args.hidden, "steps": args.steps, "lr": args.lr, "seq_len": 64,
                  "global_batch": 16, "spike_rule": "loss > 1.5x running median of previous 50 steps; "
                  "grad norm > 3x running median", "data": "synthetic task corpus (add, mul, arith, word, sequence)"},
        "variants": rows,
        "fewest_spikes": best["variant"],
        "dssn_tiny_spikes": by["dssn+tiny"]["loss_spikes"],
        "pre_normal_spikes": by["pre+normal"]["loss_spikes"],
        "final_loss_ratio_dssn_tiny_over_pre": by["dssn+tiny"]["final_loss"] / by["pre+normal"]["final_loss"],
        # fewest of both kinds, ties included; any_loss_spikes says whether the loss count meant anything
        "dssn_tiny_fewest_spikes": all(by["dssn+tiny"][k] == min(r[k] for r in rows)
                                       for k in ("loss_spikes", "grad_norm_spikes")),
        "any_loss_spikes": any(r["loss_spikes"] for r in rows),
    }
    _common.write("dssn", result, out)

    plt = _common.figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for name, c in curves.items():
        axes[0].plot(c["loss"], lw=0.8, label=name)
        axes[1].plot(c["grad_norm"], lw=0.8, label=name)
    axes[0].set(title=f"loss ({args.layers} layers, d={args.hidden}, lr={args.lr})", xlabel="step", ylabel="loss")
    axes[1].set(title="gradient norm (before clipping)", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "dssn.png")
    print(f"wrote {out / 'dssn.png'}")


if __name__ == "__main__":
    sys.exit(main())
