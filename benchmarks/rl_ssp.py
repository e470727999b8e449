"""RL under the stale-synchronous scheduler: s = 0 (synchronous) vs s = 1 vs s = 2, same policy and prompts.

Policy: the distillation benchmark's teacher (benchmarks/distill.py, cached) fine-tuned briefly on fast and
slow chats of add / sequence problems, levels 1-3 (recipes/rl/bench-policy.yaml). RL prompts: training
problems the policy sometimes solves (pass rate of 8 samples strictly between 0 and 1), a quarter asked in
fast mode (a few answer tokens), the rest in slow mode (think spans of 30-95 tokens): generation lengths
with a long tail. Each s runs the same number of learner steps (equal samples) with the same seeds, on Ray
with 2 rollout workers of 1 thread each, MARS rewards (math verifier + format + repetition, raw values) and
the learner in the driver process. Reported: samples/s, learner idle fraction, reward against wall time
and against samples; accuracy before and after RL on unseen problems of medium difficulty for the policy
(Stage-1a definition: pass rate of 8 samples strictly between 1/3 and 2/3), sampled (T = 1) and greedy;
and a discrete-event simulation fed with the measured per-group latencies and learner step times at 64
rollout workers. Throughput is then measured again in interleaved rounds of short runs (the order of s rotated,
a new seed each round); the headline ratios are the medians of the rounds' paired ratios. Every run records
where the CPU went (`cpu`: seconds per process, cores in use, the machine's busy and steal shares).

    python benchmarks/rl_ssp.py --threads 1      # full: benchmarks/results/rl_ssp.{json,png}
    python benchmarks/rl_ssp.py --quick
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parent.parent
STALENESS = (0, 1, 2)
TASKS, LEVELS = ["add", "sequence"], [1, 2, 3]
MODE_MIX = {"fast": 0.25, "slow": 0.75}  # short answers and think spans: the long tail of generation lengths


def _digest() -> str:
    blob = repr((TASKS, LEVELS)).encode() + (ROOT / "recipes" / "rl" / "bench-policy.yaml").read_bytes()
    return hashlib.sha256(blob).hexdigest()[:10]


EVAL_POOL = 3000  # fresh problems screened for the medium-difficulty evaluation set (about 120 qualify)


def build(quick: bool, threads: int | None) -> dict:
    """Policy checkpoint, RL prompts and the medium-difficulty evaluation set (cached)."""
    from duomind.tasks import generate, read_tasks, write_jsonl
    from duomind.tasks.cli import make

    if quick:
        root = _common.CACHE / "rl-bench-quick"
        if not (root / "tasks.jsonl").is_file():
            write_jsonl(root / "tasks.jsonl", generate("add", n=24, seed=0, difficulty=[1, 2]))
            write_jsonl(root / "eval.jsonl", generate("add", n=8, seed=1, difficulty=2))
        return {"policy": _common.base_model(quick=True), "prompts": root / "tasks.jsonl", "eval": root / "eval.jsonl"}
    import distill as distill_bench  # its cached teacher is our starting point
    from duomind.config import TrainConfig, from_dict, load_mapping
    from duomind.train.loop import train

    teacher = distill_bench.build(False, threads)["teacher"]
    root = _common.CACHE / f"rl-bench-{_digest()}"
    data = root / "data"
    if not (data / "sft.jsonl").is_file():
        make(out_dir=str(data), n=3000, seed=7, tasks=TASKS, difficulty=LEVELS, heldout_fraction=0.05)
    recipe = load_mapping(ROOT / "recipes" / "rl" / "bench-policy.yaml")
    recipe.update(out_dir=str(root / "policy"), data=str(data / "sft.jsonl"), init_from=str(teacher),
                  threads=threads, progress=False)
    policy = train(from_dict(TrainConfig, recipe, "recipes/rl/bench-policy.yaml"))
    from duomind.distill.select import bin_of, difficulty

    if not (root / "prompts.jsonl").is_file():
        # RL prompts: training problems the policy sometimes solves (never- and always-solved ones carry no
        # signal, as in Stage 1a)
        train_pool = [t for t in read_tasks(data / "tasks.jsonl") if t.difficulty <= 2][:480]
        passes = pass_counts(policy, train_pool)
        write_jsonl(root / "prompts.jsonl", [t for t, p in zip(train_pool, passes) if 0 < p < 8])
    evals = root / f"eval-{EVAL_POOL}.jsonl"
    if not evals.is_file():  # unseen problems of medium difficulty for this policy
        seen = {t.prompt for t in read_tasks(data / "tasks.jsonl")}
        fresh = [t for t in generate(TASKS, n=EVAL_POOL, seed=12345, difficulty=[1, 2]) if t.prompt not in seen]
        passes = pass_counts(policy, fresh)
        write_jsonl(evals, [t for t, p in zip(fresh, passes) if bin_of(difficulty(p, 8)) == "medium"])
    return {"policy": policy, "prompts": root / "prompts.jsonl", "eval": evals}


def pass_counts(policy: Path, tasks: list, samples: int = 8, seed: int = 0) -> list[int]:
    """Correct answers of the policy out of `samples` sampled slow-mode answers (T = 1) per task. With it,
    medium difficulty is the Stage-1a definition of the distillation module: difficulty = 1 - pass rate,
    medium strictly between 1/3 and 2/3 (duomind.distill.select.bin_of)."""
    from duomind.distill.loop import Verifier, reply_text, reward_record
    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tokenizer import chat_prompt, load_tokenizer
    from duomind.train.checkpoint import load_model

    model, tok, verifier = load_model(policy), load_tokenizer(policy), Verifier()
    counts = []
    for start in range(0, len(tasks), 4):
        part = tasks[start:start + 4]
        prompts = [chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode="slow") for t in part
                   for _ in range(samples)]
        out = generate(model, prompts, max_new_tokens=96, temperature=1.0, stop_tokens=stop_ids(tok), seed=seed + start)
        ok = verifier.check([reward_record(t, reply_text(tok, out[i * samples + j]), "slow", f"{i}/{j}")
                             for i, t in enumerate(part) for j in range(samples)])
        counts += [sum(ok[i * samples:(i + 1) * samples]) for i in range(len(part))]
    verifier.close()
    return counts


def config(paths: dict, s: int, out: Path, quick: bool, workers: int = 2, steps: int = 600, seed: int = 0,
           evaluate: bool = True):
    from duomind.rl.config import RLConfig

    return RLConfig(policy=str(paths["policy"]), prompts=str(paths["prompts"]), out_dir=str(out / f"s{s}"),
                    eval_data=str(paths["eval"]) if evaluate else None, eval_max=200, eval_mode="slow",
                    mode_mix=MODE_MIX, group_size=4 if quick else 8, batch_groups=2,
                    max_steps=3 if quick else steps, staleness=s, lr=2e-5, scale_std=False, temperature=1.0,
                    max_new_tokens=24 if quick else 96, rewards={"normalize": False}, workers=workers, worker_threads=1,
                    threads=1, save_every=1000, progress=not quick and evaluate, seed=seed)


def throughput_rounds(paths: dict, work: Path, args) -> list[dict]:
    """Samples/s of every s in short runs without evaluation, interleaved, the order rotated each round and a
    new seed per round: a shared VM's speed drifts with its neighbours' load (its steal time), and this way
    the drift hits every s alike; a ratio pairs s with sync inside one round."""
    from duomind.rl.loop import RLRun

    rounds = []
    for r in range(args.rounds):
        row = {}
        for s in STALENESS[r % len(STALENESS):] + STALENESS[:r % len(STALENESS)]:
            cfg = config(paths, s, work / f"round{r}", args.quick, args.workers, args.round_steps, seed=r + 1,
                         evaluate=False)
            summary = RLRun(cfg).run()
            row[str(s)] = {"samples_per_s": summary["samples_per_s"], "wall_s": summary["wall_s"],
                           "learner_idle_fraction": summary["learner_idle_fraction"], "cpu": summary["cpu"]}
        rounds.append(row)
        print(f"round {r}: " + ", ".join(f"s={k} {v['samples_per_s']:.1f} samples/s" for k, v in sorted(row.items())))
    return rounds


def final_reward(history: list[dict]) -> tuple[float, float]:
    """Mean training reward over the last quarter of the samples, and its standard error (per step)."""
    tail = history[-max(1, len(history) // 4):]
    values = [r["reward_mean"] for r in tail]
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="rollout workers (1 thread each)")
    p.add_argument("--steps", type=int, default=600, help="learner steps per staleness bound (16 samples each)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds after the learning runs")
    p.add_argument("--round_steps", type=int, default=100, help="learner steps per staleness bound in a round")
    p.add_argument("--work_dir", default=None,
                   help="keep the RL runs (checkpoints, metrics, plots) here; by default a temporary directory, removed at the end")
    args = p.parse_args()
    if args.rounds < 1 or args.round_steps < 1:
        p.error("--rounds and --round_steps must be >= 1: the headline ratios are medians over the rounds.")
    if args.quick:
        args.rounds, args.round_steps = 1, 2
    out = _common.out_dir(args)
    import ray
    import torch

    from duomind.rl.loop import RLRun
    from duomind.rl.sim import simulate

    torch.set_num_threads(args.threads or 1)
    t0 = time.perf_counter()
    paths = build(args.quick, args.threads)
    build_s = time.perf_counter() - t0
    work = Path(args.work_dir) if args.work_dir else _common.scratch("rl-ssp-")
    ray.init(num_cpus=4, object_store_memory=128 << 20, include_dashboard=False, log_to_driver=False)
    runs = {}
    try:
        for s in STALENESS:
            summary = RLRun(config(paths, s, work, args.quick, args.workers, args.steps)).run()
            runs[s] = summary
            print(f"s={s}: {summary['samples_per_s']:.2f} samples/s, learner idle "
                  f"{summary['learner_idle_fraction']:.0%}, {summary['cpu']['cores_used']:.2f} cores in use, accuracy "
                  f"(greedy) {summary['accuracy_before']['accuracy']:.3f} -> {summary['accuracy_after']['accuracy']:.3f}")
        rounds = throughput_rounds(paths, work, args)
    finally:
        ray.shutdown()
    # accuracy at the sampling temperature (8 fresh samples per problem): what RL optimises; greedy beside it
    from duomind.tasks import read_tasks
    from duomind.train.checkpoint import latest_checkpoint

    eval_tasks = read_tasks(paths["eval"])

    counts_before = pass_counts(paths["policy"], eval_tasks, seed=1000)
    counts_after = {str(s): pass_counts(latest_checkpoint(work / f"s{s}"), eval_tasks, seed=1000) for s in STALENESS}
    sampled_before = sum(counts_before) / (8 * len(eval_tasks))
    sampled_after = {s: sum(c) / (8 * len(eval_tasks)) for s, c in counts_after.items()}
    # paired over problems: the spread of the per-problem change, not of two independent means
    gain_se = {s: statistics.stdev([(a - b) / 8 for a, b in zip(c, counts_before)]) / len(eval_tasks) ** 0.5
               if len(eval_tasks) > 1 else 0.0 for s, c in counts_after.items()}

    sync = runs[0]
    latencies = [x for r in runs.values() for x in r["group_seconds"]]
    step_s = [x for r in runs.values() for x in r["step_seconds"]]
    G = runs[0]["history"][0]["samples"] // 2
    sim = {str(s): simulate(latencies, step_s, workers=64, batch_groups=64, staleness=s, steps=50, group_size=G)
           for s in STALENESS}
    sim_local = {str(s): simulate(latencies, step_s, workers=args.workers, batch_groups=2, staleness=s, steps=200, group_size=G)
                 for s in STALENESS}
    finals = {str(s): final_reward(r["history"]) for s, r in runs.items()}
    greedy_before = sync["accuracy_before"]["accuracy"]
    greedy_after = {str(s): r["accuracy_after"]["accuracy"] for s, r in runs.items()}
    before, after = sampled_before, sampled_after
    n_eval = len(eval_tasks)
    # the headline ratios: medians over the interleaved rounds (each pairs s with sync in the same round)
    paired = {s: [row[s]["samples_per_s"] / row["0"]["samples_per_s"] for row in rounds] for s in ("1", "2")}
    ratio1, ratio2 = statistics.median(paired["1"]), statistics.median(paired["2"])
    learning_ratio = {s: runs[int(s)]["samples_per_s"] / sync["samples_per_s"] for s in ("1", "2")}
    rel = {str(s): abs(finals[str(s)][0] - finals["0"][0]) / max(abs(finals["0"][0]), 1e-9) for s in (1, 2)}
    result = {
        "setup": {"quick": args.quick, "policy": str(paths["policy"]), "tasks": TASKS, "levels": LEVELS,
                  "eval": f"{n_eval} unseen problems of medium difficulty for the starting policy (pass rate of 8 "
                  "samples strictly between 1/3 and 2/3), slow mode", "workers": args.workers,
                  "worker_threads": 1, "learner_threads": 1, "cores": _common.provenance()["machine"]["cores"],
                  "group_size": G, "batch_groups": 2, "steps": runs[0]["steps"], "mode_mix": MODE_MIX,
                  "build_seconds": round(build_s, 1)},
        "samples_per_s": {str(s): r["samples_per_s"] for s, r in runs.items()},
        "learner_idle_fraction": {str(s): r["learner_idle_fraction"] for s, r in runs.items()},
        "wall_s": {str(s): r["wall_s"] for s, r in runs.items()},
        "groups_dropped": {str(s): r["groups_dropped"] for s, r in runs.items()},
        "staleness_hist": {str(s): _hist(r["history"]) for s, r in runs.items()},
        "cpu": {str(s): r["cpu"] for s, r in runs.items()},
        "throughput_ratio_ssp1_over_sync": ratio1,
        "throughput_ratio_ssp2_over_sync": ratio2,
        "throughput_ratio_by_round": paired,
        "throughput_rounds": {"rounds": rounds, "steps": args.round_steps,
                              "definition": "samples/s of short runs without evaluation, s interleaved, order rotated "
                              "each round, seed = round + 1; a ratio pairs s with sync inside one round"},
        "throughput_ratio_ssp1_over_sync_learning_run": learning_ratio["1"],
        "throughput_ratio_ssp2_over_sync_learning_run": learning_ratio["2"],
        "final_reward": {s: v[0] for s, v in finals.items()},
        "final_reward_stderr": {s: v[1] for s, v in finals.items()},
        "final_reward_rel_diff_vs_sync": rel,
        "final_reward_within_5pct": {s: v <= 0.05 for s, v in rel.items()},
        "final_reward_rel_diff_ssp1_vs_sync": rel["1"],
        "accuracy_before": before,
        "accuracy_after": after["1"],
        "accuracy_after_by_s": after,
        "accuracy_gain_points": 100 * (after["1"] - before),
        "accuracy_gain_stderr": gain_se["1"],
        "accuracy_gain_points_by_s": {s: 100 * (a - before) for s, a in after.items()},
        "accuracy_gain_stderr_by_s": gain_se,
        "accuracy_definition": "mean correctness of 8 sampled slow-mode answers (T = 1, fresh seeds) per problem",
        "greedy_accuracy_before": greedy_before,
        "greedy_accuracy_after_by_s": greedy_after,
        "group_latency_s": _common.stats(latencies),
        "group_tokens_max": _common.stats([float(x) for r in runs.values() for x in r["group_tokens"]]),
        "learner_step_s": _common.stats(step_s),
        "simulation_64_workers": sim,
        "sim_throughput_ratio_ssp1_over_sync_64": sim["1"]["samples_per_s"] / sim["0"]["samples_per_s"],
        "sim_throughput_ratio_ssp2_over_sync_64": sim["2"]["samples_per_s"] / sim["0"]["samples_per_s"],
        "simulation_local_workers": sim_local,
        "curves": {str(s): [{k: row[k] for k in ("step", "samples", "wall_s", "reward_mean", "accuracy")}
                            for row in r["history"]] for s, r in runs.items()},
        "goals": {"throughput_ratio_ssp1_over_sync >= 1.5 (median of the rounds)": ratio1 >= 1.5,
                  "final reward of s=1 within 5% of sync": rel["1"] <= 0.05,
                  "accuracy gain >= 5 points": after["1"] - before >= 0.05},
    }
    _common.write("rl_ssp", result, out)
    plot(result, out / "rl_ssp.png")
    return None


def _hist(history: list[dict]) -> dict:
    total: dict[str, int] = {}
    for row in history:
        for k, v in row["staleness_hist"].items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def _smooth(values: list[float], window: int = 10) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def plot(result: dict, path: Path) -> None:
    plt = _common.figure()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), dpi=120)
    for s, rows in result["curves"].items():
        reward = _smooth([r["reward_mean"] for r in rows], max(10, len(rows) // 12))
        axes[0].plot([r["wall_s"] for r in rows], reward, label=f"s = {s}")
        axes[1].plot([r["samples"] for r in rows], reward, label=f"s = {s}")
    axes[0].set(xlabel="wall time (s)", ylabel="training reward (MARS), running mean", title="reward vs wall time")
    axes[1].set(xlabel="samples", title="reward vs samples")
    keys = list(result["samples_per_s"])
    by_round = {"0": [1.0], **result["throughput_ratio_by_round"]}  # median of the rounds, bars from min to max
    measured = [statistics.median(by_round[k]) for k in keys]
    spread = [[m - min(by_round[k]) for k, m in zip(keys, measured)], [max(by_round[k]) - m for k, m in zip(keys, measured)]]
    learning = [result["samples_per_s"][k] / result["samples_per_s"]["0"] for k in keys]
    simulated = [result["simulation_64_workers"][k]["samples_per_s"] / result["simulation_64_workers"]["0"]["samples_per_s"]
                 for k in keys]
    x = range(len(keys))
    axes[2].bar([i - 0.2 for i in x], measured, 0.4, yerr=spread, capsize=3,
                label=f"measured, {result['setup']['workers']} workers: median (min-max) of "
                f"{len(by_round['1'])} rounds")
    axes[2].plot([i - 0.2 for i in x], learning, "k.", label="measured, the learning runs")
    axes[2].bar([i + 0.2 for i in x], simulated, 0.4, label="simulated, 64 workers")
    axes[2].axhline(1.5, ls="--", c="grey", lw=1)
    axes[2].set(xticks=list(x), xticklabels=[f"s = {k}" for k in keys], ylabel="samples/s / sync",
                title="throughput vs synchronous")
    if "accuracy_after_by_s" in result:  # sampled accuracy on the unseen medium problems, +- paired s.e. of the gain
        after = result["accuracy_after_by_s"]
        axes[3].bar([-1] + list(x), [result["accuracy_before"]] + [after[k] for k in keys], 0.6,
                    yerr=[0] + [result["accuracy_gain_stderr_by_s"][k] for k in keys], capsize=3,
                    color=["grey"] + ["tab:blue"] * len(keys), label="after RL (+- s.e. of the gain)")
        axes[3].set(xticks=[-1] + list(x), xticklabels=["before"] + [f"s = {k}" for k in keys],
                    ylabel="accuracy, 8 samples at T = 1", title=f"unseen medium problems (n = {result['setup']['eval'].split()[0]})")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
