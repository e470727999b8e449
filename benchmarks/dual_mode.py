"""Fast vs slow vs auto: accuracy and response tokens per difficulty of the dual-system model.

Trains (or reuses) the model of recipes/reasoner/default.yaml, the whole embedded pipeline: pre-training, fast + slow
SFT on the synthetic tasks, iterative distillation with merging, GRPO, auto labels from the model's own pass rates (the
recipe's rule), fusion SFT (duomind.reasoner.dual); then answers held-out problems greedily in each mode. Goals (issue 11): auto accuracy >= 0.95 x slow, auto tokens <= 0.6 x slow, slow beats
fast by >= 20 points at difficulty >= 3.

    python benchmarks/dual_mode.py [--quick] [--threads N]
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from pathlib import Path

from _common import CACHE, figure, out_dir, parser, write
from duomind.config import from_dict, load_mapping
from duomind.reasoner.dual import AUTO_RULES, EVAL_MODES, DualConfig, train_dual
from duomind.tasks import read_tasks

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "reasoner" / "default.yaml"


def config(quick: bool, threads: int | None) -> DualConfig:
    recipe = load_mapping(RECIPE)
    # a run directory per recipe version: a changed recipe never resumes (or relabels) another recipe's run
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]  # settings, not comments
    recipe.update(out_dir=str(CACHE / ("reasoner-dual-quick" if quick else f"reasoner-{digest}")), threads=threads,
                  ship_to=None)
    if quick:  # Stage 2 only (tests/test_reasoner_dual.py runs the whole pipeline on a tiny model)
        recipe.update(tasks=["add"], difficulty=[1, 3], n=160, heldout_fraction=0.1, model_preset="tiny",
                      vocab_size=300, seq_len=128, batch_size=8, pretrain_steps=0, sft_steps=6, teacher=None,
                      distill=None, rl=None, fusion_steps=4, label_pool=8, label_samples=2, max_new_tokens=32,
                      eval_limit=8, gen_batch_size=16, firp_steps=3, firp_batch_size=4, speed_prompts=2,
                      progress=False)
    return from_dict(DualConfig, recipe, str(RECIPE))


def hard_mean(by_level: dict[str, float]) -> float:
    vals = [v for k, v in by_level.items() if int(k) >= 3]
    return sum(vals) / len(vals) if vals else float("nan")


def router_bounds(ev: dict) -> dict:
    """What a perfect auto router could reach on these answers, to read the measured one against.

    `fast_if_solved`: skip thinking exactly where the fast answer is right (the rule auto labels follow).
    `fast_unless_thinking_helps`: also skip it where the slow answer is wrong anyway (AdaptThink's optimum).
    """
    fast, slow = ev["fast"]["items"], ev["slow"]["items"]
    slow_tokens = sum(slow["tokens"])
    out = {}
    for name, rule in (("fast_if_solved", lambda f, s: f),
                       ("fast_unless_thinking_helps", lambda f, s: f or not s)):
        pick = [rule(f, s) for f, s in zip(fast["correct"], slow["correct"])]
        correct = [f if p else s for p, f, s in zip(pick, fast["correct"], slow["correct"])]
        tokens = [f if p else s for p, f, s in zip(pick, fast["tokens"], slow["tokens"])]
        out[name] = {"fast_share": sum(pick) / len(pick),
                     "accuracy_over_slow": sum(correct) / max(sum(slow["correct"]), 1),
                     "tokens_over_slow": sum(tokens) / max(slow_tokens, 1)}
    return out


def spread(ev: dict, levels: list[int], resamples: int = 2000, seed: int = 0) -> dict:
    """95% intervals of the three goal quantities over the held-out problems (paired bootstrap: each resample of
    problems serves every mode), so a goal met or missed by less than the run's own sampling error reads as such."""
    rng = random.Random(seed)
    f, s, a = (ev[m]["items"] for m in EVAL_MODES)
    n = len(levels)
    draws: dict[str, list[float]] = {"auto_accuracy_over_slow": [], "auto_tokens_over_slow": [],
                                     "slow_minus_fast_hard": []}
    for _ in range(resamples):
        pick = [rng.randrange(n) for _ in range(n)]
        solved = sum(s["correct"][i] for i in pick)
        draws["auto_accuracy_over_slow"].append(sum(a["correct"][i] for i in pick) / max(solved, 1))
        draws["auto_tokens_over_slow"].append(sum(a["tokens"][i] for i in pick) / max(sum(s["tokens"][i] for i in pick), 1))
        by_level: dict[str, list[int]] = {}
        for i in pick:
            by_level.setdefault(str(levels[i]), []).append(s["correct"][i] - f["correct"][i])
        draws["slow_minus_fast_hard"].append(hard_mean({k: sum(v) / len(v) for k, v in by_level.items()}))
    def quantile(xs: list[float], q: float) -> float:
        xs = sorted(x for x in xs if x == x)  # a resample without hard problems has no gap (nan)
        return xs[min(int(q * len(xs)), len(xs) - 1)] if xs else float("nan")

    return {k: {"low": quantile(v, 0.025), "high": quantile(v, 0.975)} for k, v in draws.items()}


def label_sweep(cfg: DualConfig, report: dict, variants: list[tuple[str, float]]) -> dict:
    """Auto mode under other label rules: the same dual model, a labelling and a fusion SFT for each."""
    out = {}
    for rule, value in variants:
        knob = {"auto_rule": rule, **({"min_gain": value} if rule == "gain" else {"fast_threshold": value})}
        tag = f"gain{value}" if rule == "gain" else f"t{value}"
        # from the recipe's labelling model itself: no pre-training, dual SFT or Stage-1 step runs again
        variant = dataclasses.replace(cfg, out_dir=f"{cfg.out_dir}-{tag}", init_from=report["dual_model"], teacher=None,
                                      distill=None, rl=None, firp_steps=0, ship_to=None, **knob)
        run = train_dual(variant)
        ev = run["eval"]
        name = variant.label_rule
        out[name] = {"fast_share": run["labels"]["fast_share"], "auto_accuracy": ev["auto"]["accuracy"],
                     "slow_accuracy": ev["slow"]["accuracy"],
                     "auto_accuracy_over_slow": ev["auto"]["accuracy"] / max(ev["slow"]["accuracy"], 1e-9),
                     "auto_tokens_over_slow": ev["auto"]["mean_tokens"] / max(ev["slow"]["mean_tokens"], 1e-9)}
        print(f"auto labels by {name}: {out[name]}")
    return out


def _variants(spec: str) -> list[tuple[str, float]]:
    """'pass_rate:0.75,gain:0.5' -> [('pass_rate', 0.75), ('gain', 0.5)]."""
    out = []
    for item in filter(None, spec.split(",")):
        rule, _, value = item.partition(":")
        if rule not in AUTO_RULES or not value:
            raise SystemExit(f"--label_rules: {item!r} is not RULE:VALUE with RULE one of {', '.join(AUTO_RULES)}.")
        out.append((rule, float(value)))
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--label_rules", default=None,
                   help="other auto-label rules to train auto mode with, RULE:VALUE comma-separated (default "
                        "pass_rate:0.25,pass_rate:0.5,pass_rate:0.75,gain:0.5; quick pass_rate:0.5)")
    args = p.parse_args()
    out = out_dir(args)
    cfg = config(args.quick, args.threads)
    report = train_dual(cfg)
    ev = report["eval"]
    level = {t.id: t.difficulty for t in read_tasks(Path(cfg.out_dir) / "data" / "heldout.jsonl")}
    acc = {m: ev[m]["accuracy"] for m in EVAL_MODES}
    tokens = {m: ev[m]["mean_tokens"] for m in EVAL_MODES}
    hard = {m: hard_mean(ev[m]["by_difficulty"]) for m in EVAL_MODES}
    result = {
        "accuracy": acc, "tokens": tokens,
        "accuracy_by_difficulty": {m: ev[m]["by_difficulty"] for m in EVAL_MODES},
        "tokens_by_difficulty": {m: ev[m]["tokens_by_difficulty"] for m in EVAL_MODES},
        "auto_think_share_by_difficulty": ev["auto"]["think_share_by_difficulty"],
        "auto_accuracy_over_slow": acc["auto"] / acc["slow"] if acc["slow"] else float("nan"),
        "auto_tokens_over_slow": tokens["auto"] / tokens["slow"] if tokens["slow"] else float("nan"),
        "slow_minus_fast_hard": hard["slow"] - hard["fast"],
        "auto_labels": report["labels"], "n_eval": ev["fast"]["n"], "router_bounds": router_bounds(ev),
        "spread_95": spread(ev, [level[i] for i in ev["fast"]["items"]["id"]]),
        "firp": {k: v for k, v in report.get("firp", {}).items() if k != "seconds"},
        "label_sweep": label_sweep(cfg, report, _variants(args.label_rules or (
            "pass_rate:0.5" if args.quick else "pass_rate:0.25,pass_rate:0.5,pass_rate:0.75,gain:0.5"))),
        "setup": {k: v for k, v in report["config"].items() if k not in ("out_dir", "progress")},
    }
    result["goals_met"] = {"auto_accuracy_over_slow >= 0.95": result["auto_accuracy_over_slow"] >= 0.95,
                           "auto_tokens_over_slow <= 0.6": result["auto_tokens_over_slow"] <= 0.6,
                           "slow_minus_fast_hard >= 0.2": result["slow_minus_fast_hard"] >= 0.2}
    print(f"{'mode':6} {'accuracy':>9} {'tokens':>7}  by difficulty")
    for m in EVAL_MODES:
        levels = " ".join(f"L{k} {v:.0%}/{ev[m]['tokens_by_difficulty'][k]:.0f}t" for k, v in ev[m]["by_difficulty"].items())
        print(f"{m:6} {acc[m]:9.1%} {tokens[m]:7.1f}  {levels}")
    for name, b in result["router_bounds"].items():
        print(f"perfect router, {name}: fast {b['fast_share']:.0%}, accuracy {b['accuracy_over_slow']:.2f}x slow, "
              f"tokens {b['tokens_over_slow']:.2f}x slow")
    print("goals:", result["goals_met"])
    print("95% intervals over problems:", {k: f"{v['low']:.3f}-{v['high']:.3f}" for k, v in result["spread_95"].items()})
    write("dual_mode", result, out)

    plot(result, out / "dual_mode.png")


def plot(result: dict, path: Path) -> None:
    """Accuracy and tokens by difficulty per mode; auto's trade-off under each label rule and the router bounds."""
    plt = figure()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.8), dpi=110)
    for m, style in zip(EVAL_MODES, ("o-", "s-", "^--")):
        acc, tok = result["accuracy_by_difficulty"][m], result["tokens_by_difficulty"][m]
        ax1.plot([int(k) for k in acc], list(acc.values()), style, label=m)
        ax2.plot([int(k) for k in tok], list(tok.values()), style, label=m)
    ax1.set(xlabel="difficulty", ylabel="held-out accuracy (greedy)", ylim=(0, 1.02), xticks=[1, 2, 3, 4])
    ax2.set(xlabel="difficulty", ylabel="response tokens (mean)", xticks=[1, 2, 3, 4])
    ax1.legend()
    recipe_rule = DualConfig(**{k: result["setup"][k] for k in ("auto_rule", "min_gain", "fast_threshold")}).label_rule
    sweep = {recipe_rule: {"auto_tokens_over_slow": result["auto_tokens_over_slow"],
                           "auto_accuracy_over_slow": result["auto_accuracy_over_slow"]}, **result["label_sweep"]}
    markers = itertools.cycle("oDsv^<>Ph")  # a marker per rule in the legend: the points of a rule sit close together
    for name, r in sorted(sweep.items(), key=lambda kv: kv[1]["auto_tokens_over_slow"]):
        recipe = name == recipe_rule
        ax3.plot(r["auto_tokens_over_slow"], r["auto_accuracy_over_slow"], "*" if recipe else next(markers),
                 ms=12 if recipe else 6, color="tab:purple" if name.startswith("gain") else "tab:green",
                 label=name + (" (recipe)" if recipe else ""))
    short = {"fast_if_solved": "perfect router:\nskip if fast is right", "fast_unless_thinking_helps":
             "perfect router:\nskip unless thinking helps"}
    for name, b in result["router_bounds"].items():
        ax3.plot(b["tokens_over_slow"], b["accuracy_over_slow"], "x", color="gray")
        ax3.annotate(short.get(name, name), (b["tokens_over_slow"], b["accuracy_over_slow"]), fontsize=7,
                     xytext=(4, -18), textcoords="offset points")
    ax3.axvspan(0, 0.6, ymin=0, ymax=1, alpha=0.08, color="green")
    ax3.axhline(0.95, ls=":", color="gray")
    ax3.set(xlabel="auto tokens / slow tokens (goal <= 0.6)", ylabel="auto accuracy / slow (goal >= 0.95)",
            xlim=(0, 1.25), ylim=(0.5, 1.15))
    ax3.legend(fontsize=7, loc="lower left", title="auto labels", title_fontsize=7)
    fig.suptitle("dual-system model: fast / slow / auto")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
