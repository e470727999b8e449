"""Render the README's results table from benchmarks/results/*.json.

    python benchmarks/_report.py            # rewrite the table between the README's results markers
    python benchmarks/_report.py --check    # exit 1 if the README is out of date (a test runs this)

Each claim is (benchmark, key, comparison, goal) as the issues state them; a claim whose results file is
missing shows as "not run". The table is generated, never typed by hand, so it cannot drift from the data.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

# (benchmark, key, op, goal, what it measures); op "" marks a context number with no goal
CLAIMS: list[tuple[str, str, str, float | bool | None, str]] = [
    ("decode", "speedup_vs_hf_batch1", ">=", 2.0, "decode tokens/s vs HF `generate`, batch 1 (same weights)"),
    ("decode", "speedup_vs_hf_batch8", ">=", 1.0, "decode tokens/s vs HF `generate`, batch 8"),
    ("decode", "greedy_outputs_equal", "==", True, "greedy tokens identical to HF"),
    ("decode", "overhead_ratio_vs_hf_batch1", "", None, "per-token time above the matmul floor, HF / DuoMind, batch 1"),
    ("decode", "best_possible_speedup_batch1", "", None, "HF step time / matmul floor: the most any loop could gain"),
    ("train_throughput", "speedup_vs_hf", ">=", 1.0, "training step vs HF `LlamaForCausalLM`, same size"),
    ("dssn", "dssn_tiny_fewest_spikes", "==", True, "DSSN + TinyInit has the fewest loss and grad-norm spikes"),
    ("dssn", "final_loss_ratio_dssn_tiny_over_pre", "<=", 1.0, "final loss, DSSN + TinyInit / pre-norm"),
    ("rewards", "math_checks_per_second", ">=", 1000, "math verifications / s, 2 workers"),
    ("rewards", "code_programs_per_second", ">=", 20, "sandboxed programs / s, 2 workers, full isolation"),
    ("rewards", "math_verifier_accuracy", ">=", 0.98, "math verifier accuracy, hand-written equivalence suite"),
    ("moe_layer", "min_speedup_vs_hf_decode", ">=", 3.0,
     "MoE layer vs HF Qwen3-MoE block (its default experts impl), worst of T = 1, 8, 64"),
    ("moe_layer", "speedup_vs_hf_t512", ">=", 1.2, "MoE layer vs HF Qwen3-MoE block, T = 512"),
    ("moe_layer", "fraction_of_matmul_peak", ">=", 0.8, "MoE layer FLOP/s / dense matmul FLOP/s, T = 4096"),
    ("moe_balance", "moge_max_is", "==", 0.0, "MoGE imbalance score IS, worst step and layer of training"),
    ("moe_balance", "moe_mean_is", ">", 0.0, "plain top-k MoE imbalance score, mean over training"),
    ("moe_balance", "loss_ratio_moge_over_moe", "<=", 1.02, "held-out loss, MoGE / MoE (same data and sizes)"),
    ("ep_step", "step_time_ratio_moge_over_moe", "<", 1.0, "expert-parallel fwd+bwd step, MoGE / MoE, 2 ranks"),
    ("distill", "merge_balanced_at_or_above_others", "==", True,
     "distillation: merging + balanced selection ends at or above no-merge and random selection"),
    ("distill", "final_accuracy_merge_balanced", "", None, "distillation: final held-out accuracy, merging + balanced"),
    ("distill", "merge_balanced_minus_best_other", "", None,
     "distillation: final accuracy, merging + balanced minus the better of the other two"),
    ("distill", "difference_within_noise", "", None,
     "distillation: that difference is under 2 standard errors (held-out set size)"),
    ("spatial", "describe_seconds_100k", "<=", 10.0, "scene description of 100,000 features (synthetic city), seconds, 2 threads on 2 cores"),
    ("spatial", "describe_seconds_100k_1_thread", "", None, "the same on 1 thread"),
    ("spatial", "answerable_fraction", ">=", 0.95, "generated questions answerable from the 2,000-token rendering (rule reader)"),
    ("spatial", "accuracy_with_description", "", None, "small fine-tuned DuoMind model, 5 perception categories, with the description"),
    ("spatial", "accuracy_without_description", "", None, "the same model without the description (chance 0.25)"),
    ("asr", "mean_cer", "<=", 0.15, "ASR mean CER over 8 languages, held-out synthetic speakers, beam, language detected"),
    ("asr", "lid_accuracy", ">=", 0.95, "ASR language identification accuracy, held-out speakers"),
    ("asr", "rtf_ctc", "<=", 0.1, "ASR real-time factor, CTC-only decoding, 1 thread"),
    ("asr", "speedup_ctc_vs_whisper", ">", 1.0, "ASR CTC-only speed / same-size HF Whisper (random weights, same audio)"),
    ("asr", "rtf_beam", "", None, "ASR real-time factor, joint CTC/attention beam 5"),
    ("medical", "mean_closed_accuracy", ">=", 0.8,
     "small VLM, held-out synthetic scans: closed accuracy, mean of the 4 Med-MIM abilities (chance 0.25)"),
    ("medical", "negative_accuracy", ">=", 0.7, "small VLM: false premises rejected (MedHallTune-style negatives)"),
    ("medical", "min_margin_temporal_comparison", ">=", 0.2,
     "small VLM: all images minus last image only, the worse of temporal and comparison"),
    ("prune", "pangu_light_beats_minitron_and_shortgpt", "==", True,
     "pruning to 50% params: pangu-light held-out loss after equal KD recovery below minitron and shortgpt"),
    ("prune", "pangu_light_beats_minitron_and_shortgpt_300_steps", "==", True,
     "the same after 300 KD steps (pre-norm bench-base, a second build)"),
    ("prune", "speedup_decode_pangu_light", ">=", 1.6, "decode tokens/s, pangu-light 50% model / original, batch 1"),
    ("prune", "min_speedup_decode", "", None, "decode speedup at 50% params, slowest of the five methods"),
    ("prune", "dssn_pangu_light_beats_minitron_and_shortgpt", "", None,
     "the same loss comparison on the DSSN variant (post-norms absorbed)"),
    ("dual_mode", "auto_accuracy_over_slow", ">=", 0.95, "reasoner: auto-mode accuracy / slow-mode accuracy, held-out task suite"),
    ("dual_mode", "auto_tokens_over_slow", "<=", 0.6, "reasoner: auto-mode mean output tokens / slow-mode"),
    ("dual_mode", "slow_minus_fast_hard", ">=", 0.2, "reasoner: slow minus fast accuracy at difficulty >= 3"),
    ("serve", "throughput_ratio_16_over_1", ">=", 4.0,
     "serving: generated tokens/s with 16 concurrent streaming clients / with 1 (continuous batching)"),
    ("serve", "throughput_ratio_4_over_1", "", None, "serving: tokens/s with 4 concurrent streaming clients / with 1"),
    ("rl_ssp", "throughput_ratio_ssp1_over_sync", ">=", 1.5,
     "RL samples/s, stale-synchronous s = 1 / synchronous (2 rollout workers, 2 cores), median of interleaved rounds"),
    ("rl_ssp", "throughput_ratio_ssp1_over_sync_learning_run", "", None,
     "the same in the 600-step learning runs (one pair)"),
    ("rl_ssp", "throughput_ratio_ssp2_over_sync", "", None, "RL samples/s, s = 2 / synchronous, median of the rounds"),
    ("rl_ssp", "final_reward_rel_diff_ssp1_vs_sync", "<=", 0.05, "RL final training reward at equal samples, |s=1 - sync| / sync"),
    ("rl_ssp", "sim_throughput_ratio_ssp1_over_sync_64", ">=", 1.5,
     "RL samples/s, s = 1 / synchronous, simulated at 64 rollout workers from the measured latencies"),
    ("rl_ssp", "accuracy_gain_points", ">=", 5.0, "RL: sampled (T = 1) accuracy on unseen medium-difficulty problems, after - before (points)"),
    ("speculative", "firp_speedup_math", ">=", 2.0, "FIRP tokens/s over plain decoding, math prompts, batch 1, greedy"),
    ("speculative", "firp_speedup_text", "", None, "FIRP tokens/s over plain decoding, free-text prompts"),
    ("speculative", "lossless", "==", True, "every speculative method reproduces greedy decoding token for token"),
    ("speculative", "firp_ahead_of_medusa_and_lookup_math", "==", True,
     "FIRP ahead of Medusa-style heads and prompt lookup, math prompts"),
    ("speculative", "speedup_vs_hf_assisted", ">", 1.0, "FIRP tokens/s over HF assisted generation (same draft model)"),
    ("sim_search", "configs_per_second", ">=", 1000, "simulator configurations evaluated / s"),
    ("sim_validation", "local_median_abs_error", "<=", 0.20, "simulator vs measured step times on this machine"),
    ("sim_validation", "published_median_abs_error", "<=", 0.15, "simulator vs published MFU / throughput"),
]
OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render() -> str:
    lines = ["| benchmark | claim | goal | measured | met | plot |", "|---|---|---|---|---|---|"]
    for name, key, op, goal, what in CLAIMS:
        path = RESULTS / f"{name}.json"
        goal_text = "" if not op else f"{op} {_fmt(goal)}" if op != "==" else _fmt(goal)
        if not path.is_file():
            lines.append(f"| `{name}` | {what} | {goal_text} | not run | | |")
            continue
        data = json.loads(path.read_text())
        if key not in data:
            lines.append(f"| `{name}` | {what} | {goal_text} | missing `{key}` | | |")
            continue
        value = data[key]
        met = "" if not op else "✅" if OPS[op](value, goal) else "❌"
        png = RESULTS / f"{name}.png"
        plot = f"[png](benchmarks/results/{png.name})" if png.is_file() else ""
        lines.append(f"| `{name}` | {what} | {goal_text} | {_fmt(value)} | {met} | {plot} |")
    machines = set()
    for path in sorted(RESULTS.glob("*.json")):
        machine = json.loads(path.read_text()).get("provenance", {}).get("machine", {})
        if machine:
            machines.add(f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores")
    if machines:
        lines += ["", "Measured on: " + "; ".join(sorted(machines)) + ". Each JSON records its command, commit and date."]
    return "\n".join(lines)


def updated(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers; add them where the table belongs.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}\n{END}{tail}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = p.parse_args()
    text = README.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md results table is out of date: run `python benchmarks/_report.py`.")
            return 1
        return 0
    README.write_text(new)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
