"""Iterative distillation: (a) merging + balanced selection vs (b) no merging vs (c) random selection.

Teacher and student are built by recipes/distill/bench-*.yaml on the synthetic task corpus (add and
sequence problems, levels 1-2) and cached in .duomind_cache/distill-bench (rebuilt when a recipe
changes). Then three distillation runs of 3 iterations each, from the same student theta_0 and the same
prompt pool:

    (a) merge_balanced     recipes/distill/bench.yaml: balanced difficulty mix, task-arithmetic merge
    (b) no_merge           the same without the inter-iteration merge
    (c) random_equal_size  merging, but a random selection of the size (a) selected in each iteration

Held-out accuracy (greedy, slow mode) after every iteration is `accuracy_by_iteration`. The goal: (a) ends
at or above (b) and (c).

    python benchmarks/distill.py --threads 1        # full: benchmarks/results/distill.{json,png}
    python benchmarks/distill.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "distill"
VARIANTS = ("merge_balanced", "no_merge", "random_equal_size")
TASKS, LEVELS = ["add", "sequence"], [1, 2]
SIZES = {"records": 6000, "pool": 2000}  # data the recipes train on


def _recipe(name: str) -> dict:
    from duomind.config import load_mapping

    return load_mapping(RECIPES / f"{name}.yaml")


def _train(name: str, threads: int | None, **paths) -> Path:
    from duomind.config import TrainConfig, from_dict
    from duomind.train.loop import train

    fields = {**_recipe(name), **paths, "threads": threads, "progress": False}
    return train(from_dict(TrainConfig, fields, f"recipes/distill/{name}.yaml"))


def build(quick: bool, threads: int | None) -> dict:
    """Data, tokenizer, teacher and student (cached); returns their paths."""
    from duomind.tasks import generate, read_jsonl, sft_record, write_jsonl
    from duomind.tasks.cli import make
    from duomind.tokenizer import train_cli

    # caches keyed by what shapes them: the data by its sizes, each model by its recipes, so changing the
    # student's recipes does not retrain the teacher
    def digest(*names: str) -> str:
        blob = repr((TASKS, LEVELS, SIZES)).encode() + b"".join((RECIPES / f"{n}.yaml").read_bytes() for n in names)
        return hashlib.sha256(blob).hexdigest()[:10]

    root = _common.CACHE / ("distill-bench-quick" if quick else f"distill-bench-{digest()}")
    data, pool, tok = root / "data", root / "pool", root / "tokenizer"
    if quick:
        # a tiny teacher that memorised a handful of problems: enough to exercise every stage in seconds
        if not (data / "sft_slow.jsonl").is_file():
            tasks = generate("add", n=16, seed=3, difficulty=1)
            write_jsonl(pool / "tasks.jsonl", tasks[:10])
            write_jsonl(data / "heldout.jsonl", tasks[10:14])
            write_jsonl(data / "sft_slow.jsonl", [sft_record(t, "slow") for t in tasks[:14]])
            (data / "corpus.txt").write_text("\n".join(t.prompt + " " + t.answer for t in tasks) + "\n")
        if not (tok / "tokenizer.json").is_file():
            train_cli(str(data / "corpus.txt"), out=str(tok), vocab_size=300, min_frequency=1)
        teacher = _train("bench-teacher", threads, out_dir=str(root / "teacher"), data=str(data / "sft_slow.jsonl"),
                         init_from=None, tokenizer=str(tok), model_preset="tiny", model={"vocab_size": 300},
                         max_steps=150, save_every=10, keep_last=20, lr=1e-2, min_lr=1e-3, global_batch_size=14,
                         micro_batch_size=14)
        return {"root": root, "teacher": teacher, "student": root / "teacher" / "step-000080",
                "pool": pool / "tasks.jsonl", "heldout": data / "heldout.jsonl"}
    if not (data / "sft.jsonl").is_file():
        make(out_dir=str(data), n=SIZES["records"], seed=0, tasks=TASKS, difficulty=LEVELS, heldout_fraction=0.05)
    if not (pool / "tasks.jsonl").is_file():
        make(out_dir=str(pool), n=SIZES["pool"], seed=1, tasks=TASKS, difficulty=LEVELS, heldout_fraction=0.0)
    if not (data / "sft_slow.jsonl").is_file():
        write_jsonl(data / "sft_slow.jsonl", [r for r in read_jsonl(data / "sft.jsonl") if r["mode"] == "slow"])
    if not (tok / "tokenizer.json").is_file():
        train_cli(str(data / "corpus.txt"), out=str(tok), vocab_size=384)
    corpus = {"data": str(data / "corpus.txt"), "tokenizer": str(tok)}
    tdir = root / f"teacher-{digest('bench-teacher-pretrain', 'bench-teacher')}"
    sdir = root / f"student-{digest('bench-student-pretrain', 'bench-student')}"
    t_pre = _train("bench-teacher-pretrain", threads, out_dir=str(tdir / "pretrain"), **corpus)
    teacher = _train("bench-teacher", threads, out_dir=str(tdir / "sft"), data=str(data / "sft_slow.jsonl"),
                     init_from=str(t_pre))
    s_pre = _train("bench-student-pretrain", threads, out_dir=str(sdir / "pretrain"), **corpus)
    student = _train("bench-student", threads, out_dir=str(sdir / "sft"),
                     data=str(data / "sft_slow.jsonl"), init_from=str(s_pre))
    return {"root": root, "teacher": teacher, "student": student, "pool": pool / "tasks.jsonl",
            "heldout": data / "heldout.jsonl"}


def distill_config(paths: dict, variant: str, quick: bool, threads: int | None, sizes: list[int] | None):
    from duomind.config import from_dict
    from duomind.distill.config import DistillConfig

    fields = _recipe("bench")
    fields.update(teacher=str(paths["teacher"]), student=str(paths["student"]), prompts=str(paths["pool"]),
                  eval_data=str(paths["heldout"]), out_dir=str(paths["root"] / "runs" / variant), threads=threads,
                  progress=not quick)
    if quick:
        fields.update(iterations=2, prompts_per_iteration=5, teacher_samples=4, student_samples=4,
                      max_new_tokens=64, batch_size=20, select_size=3, drop_solved=False, drop_unsolved=False,
                      sft={**fields["sft"], "max_steps": 4, "save_every": 2, "global_batch_size": 3,
                           "micro_batch_size": 3}, merge_checkpoints=2)
    if variant == "no_merge":
        fields["merge"] = False
    if variant == "random_equal_size":
        fields.update(selection="random", select_size=sizes)
    return from_dict(DistillConfig, fields, f"distill benchmark, {variant}")


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    try:
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    except argparse.ArgumentError:
        pass  # _common's parser already has it
    args = p.parse_args()
    if args.quick and not args.threads:
        args.threads = 1  # tiny models gain nothing from more threads, and spinning ones slow a loaded machine
    out = _common.out_dir(args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from duomind.distill.loop import Verifier, evaluate, load_any
    from duomind.tasks import read_tasks
    from duomind.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    paths = build(args.quick, args.threads)
    build_s = time.perf_counter() - t0
    shutil.rmtree(paths["root"] / "runs", ignore_errors=True)  # runs are always recomputed; the models are cached

    heldout = read_tasks(paths["heldout"])
    verifier = Verifier()
    teacher, teacher_dir = load_any(str(paths["teacher"]))
    student, student_dir = load_any(str(paths["student"]))
    cfg_a = distill_config(paths, "merge_balanced", args.quick, args.threads, None)
    teacher_eval = evaluate(teacher, load_tokenizer(teacher_dir), heldout, cfg_a.mode, cfg_a.max_new_tokens,
                            cfg_a.batch_size, verifier)
    verifier.close()
    params = {"teacher": sum(x.numel() for x in teacher.parameters()),
              "student": sum(x.numel() for x in student.parameters())}
    del teacher, student

    from duomind.distill.loop import distill

    reports, seconds, sizes = {}, {}, None
    for variant in VARIANTS:
        cfg = distill_config(paths, variant, args.quick, args.threads, sizes)
        t1 = time.perf_counter()
        reports[variant] = distill(cfg)
        seconds[variant] = round(time.perf_counter() - t1, 1)
        if variant == "merge_balanced":
            sizes = reports[variant]["selected_by_iteration"]
        acc = reports[variant]["accuracy_by_iteration"]
        print(f"{variant:18s} accuracy by iteration: {' -> '.join(f'{a:.1%}' for a in acc)}   ({seconds[variant]} s)")

    n_eval = len(heldout)
    acc = {v: r["accuracy_by_iteration"] for v, r in reports.items()}
    final = {v: a[-1] for v, a in acc.items()}
    best_other = max(final["no_merge"], final["random_equal_size"])
    spread = math.sqrt(stderr(final["merge_balanced"], n_eval) ** 2 + stderr(best_other, n_eval) ** 2)
    z = (final["merge_balanced"] - best_other) / spread if spread > 0 else 0.0
    rows = {v: r["iterations"] for v, r in reports.items()}
    result = {
        "setup": {
            "quick": args.quick, "tasks": TASKS if not args.quick else ["add"],
            "levels": LEVELS if not args.quick else [1], "heldout_problems": n_eval,
            "prompt_pool": len(read_tasks(paths["pool"])), "data": SIZES, "iterations": cfg_a.iterations,
            "prompts_per_iteration": cfg_a.prompts_per_iteration, "teacher_samples": cfg_a.teacher_samples,
            "student_samples": cfg_a.student_samples, "select_size": cfg_a.select_size, "mix": cfg_a.mix,
            "sft": cfg_a.sft, "merge": {"method": cfg_a.merge_method, "checkpoints": cfg_a.merge_checkpoints,
                                        "lambda": cfg_a.merge_lambda},
            "teacher_params": params["teacher"], "student_params": params["student"],
            "recipes": "recipes/distill/bench-*.yaml, recipes/distill/bench.yaml",
            "build_seconds": round(build_s, 1), "variant_seconds": seconds, "threads": args.threads,
        },
        "teacher_accuracy": teacher_eval["accuracy"],
        "teacher_accuracy_by_difficulty": teacher_eval["by_difficulty"],
        "accuracy_by_iteration": acc,
        "accuracy_stderr_final": {v: stderr(final[v], n_eval) for v in VARIANTS},
        "accuracy_by_difficulty": {v: r["accuracy_by_difficulty"] for v, r in reports.items()},
        "selected_by_iteration": {v: r["selected_by_iteration"] for v, r in reports.items()},
        "selected_difficulty_bins": {v: [x["selected"]["by_bin"] for x in rows[v][1:]] for v in VARIANTS},
        "teacher_pass_rate_by_iteration": {v: [x["teacher"]["response_pass_rate"] for x in rows[v][1:]]
                                           for v in VARIANTS},
        "mean_response_tokens_by_iteration": {v: [x["eval"]["mean_tokens"] for x in rows[v]] for v in VARIANTS},
        "final_accuracy_merge_balanced": final["merge_balanced"],
        "final_accuracy_no_merge": final["no_merge"],
        "final_accuracy_random_equal_size": final["random_equal_size"],
        "start_accuracy": acc["merge_balanced"][0],
        "merge_balanced_minus_best_other": final["merge_balanced"] - best_other,
        # the difference in standard errors of a difference of two proportions: |z| < 2 is within noise
        "merge_balanced_minus_best_other_z": z,
        "difference_within_noise": abs(z) < 2.0,
        "merge_balanced_at_or_above_others": final["merge_balanced"] >= best_other,
        "goal": "final accuracy of merge_balanced >= no_merge and >= random_equal_size",
    }
    _common.write("distill", result, out)
    plot(result, out / "distill.png")


def plot(result: dict, path: Path) -> None:
    plt = _common.figure()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    styles = {"merge_balanced": ("tab:blue", "o-"), "no_merge": ("tab:orange", "s--"),
              "random_equal_size": ("tab:green", "^:")}
    for v, acc in result["accuracy_by_iteration"].items():
        color, style = styles[v]
        ax1.plot(range(len(acc)), acc, style, color=color, label=v)
    ax1.axhline(result["teacher_accuracy"], color="gray", lw=1, ls="--", label="teacher")
    n = len(next(iter(result["accuracy_by_iteration"].values())))
    ax1.set_xticks(range(n))
    ax1.set_xlabel("iteration (0 = starting student)")
    ax1.set_ylabel(f"held-out accuracy ({result['setup']['heldout_problems']} problems, greedy)")
    ax1.legend(fontsize=7)
    levels = sorted(result["accuracy_by_difficulty"]["merge_balanced"])
    width = 0.8 / len(styles)
    for i, v in enumerate(styles):
        finals = [result["accuracy_by_difficulty"][v][lvl][-1] for lvl in levels]
        ax2.bar([k + i * width for k in range(len(levels))], finals, width=width, color=styles[v][0], label=v)
    ax2.set_xticks([k + width for k in range(len(levels))], [f"level {lvl}" for lvl in levels])
    ax2.set_ylabel("final held-out accuracy")
    ax2.legend(fontsize=7)
    fig.suptitle("iterative distillation, 3 variants from one student (Pangu Embedded stage 1a)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
