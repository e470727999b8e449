"""Med-MIM + MedHallTune (arXiv 2505.19031, 2502.20780): a small multi-image VLM on held-out synthetic scans.

The DuoMind VLM (patch encoder + projector + DuoMind decoder) is trained with the two-stage recipe (caption
pre-alignment, then instruction tuning) on procedural scans, then asked held-out questions:
1. accuracy_by_ability: closed (4-way) questions of the four Med-MIM abilities (goal: mean >= 0.8; chance 0.25).
2. negative_accuracy: MedHallTune-style false premises rejected (goal >= 0.7); positives kept alongside.
3. single_image_accuracy_by_ability: the same questions showing only the last image. One model is trained on
   both forms (every other multi-image training question also appears with its last image only), so the
   difference is what the earlier images supply (goal: multi - single >= 0.2 on temporal and comparison).

    python benchmarks/medical.py --threads 1          # full (~17 min of training on one thread)
    python benchmarks/medical.py --quick --threads 1  # seconds, writes to a temp dir

The full run keeps its data and checkpoints in .duomind_cache/medical-bench, so an interrupted run (or one
split into chunks with --stop_at) resumes where it stopped.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import _common

ABILITIES = ("temporal", "reasoning", "comparison", "co-reference")


def make_data(work: Path, n_train: int, n_test: int, captions: int) -> dict[str, Path]:
    from duomind.apps.medical import synth

    if (work / "data" / "done").is_file():
        return {p.stem: p for p in (work / "data").glob("*.json*")}
    train = synth.make_questions(n_train, seed=1, n_premise=2 * n_train)
    test = synth.make_questions(n_test, seed=2, open_fraction=0.0, n_premise=2 * n_test)
    rng = random.Random(3)
    qs = {
        "captions": [synth.caption_question(rng) for _ in range(captions)],
        # every other training question also appears with its last image only (for the baseline's view)
        "train": train["medmim"] + [synth.last_image_only(q) for q in train["medmim"][::2]],
        "medhall_train": train["medhall"],
        "test": test["medmim"],
        "test_single": [synth.last_image_only(q) for q in test["medmim"]],
        "medhall_test": test["medhall"],
    }
    paths = synth.write_questions(qs, work / "data", image_size=32, seed=4)
    (work / "data" / "done").write_text("ok")
    return paths


def run_training(work: Path, paths: dict[str, Path], align_steps: int, steps: int, batch: int, preset: str,
                 threads: int | None, stop_at: int, time_limit_s: float) -> tuple[Path, dict]:
    from duomind.apps.medical.data import load_items
    from duomind.apps.medical.model import build_tokenizer
    from duomind.apps.medical.train import MedTrainConfig, train_vlm

    t0 = time.perf_counter()
    data = [str(paths[k]) for k in ("train", "medhall_train", "captions")]
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():  # one tokenizer over all training text, for both stages
        texts = [t for p in data for it in load_items(p) for t in (it.prompt, it.answer)]
        build_tokenizer(texts, vocab_size=512).save_pretrained(str(tok_dir))
    common = dict(batch_size=batch, threads=threads or 0, progress=True, decoder_preset=preset,
                  decoder={"max_position_embeddings": 256}, save_every=100, warmup_steps=20, time_limit_s=time_limit_s)
    align = train_vlm(MedTrainConfig(data=[str(paths["captions"])], out_dir=str(work / "align"), max_steps=align_steps,
                                     tokenizer=str(tok_dir), lr=2e-3, min_lr=1e-3, **common))
    t1 = time.perf_counter()
    if align.name != f"step-{align_steps:06d}":  # out of time during alignment
        return align, {}
    common["time_limit_s"] = max(time_limit_s - (t1 - t0), 1.0) if time_limit_s else 0.0
    final = train_vlm(MedTrainConfig(data=data, out_dir=str(work / "instruct"), init_from=str(align), max_steps=steps,
                                     stop_at=stop_at, lr=2e-3, min_lr=1e-4, **common))
    return final, {"align_seconds_this_run": round(t1 - t0, 1), "instruct_seconds_this_run": round(time.perf_counter() - t1, 1)}


def evaluate(ckpt: Path, paths: dict[str, Path]) -> dict:
    from duomind.apps.medical.backends import local_backend
    from duomind.apps.medical.data import load_items
    from duomind.apps.medical.eval import evaluate as run_eval

    backend = local_backend(str(ckpt), max_new_tokens=24, batch_size=32)
    out = {}
    for name in ("test", "test_single", "medhall_test"):
        report, replies = run_eval(load_items(paths[name]), backend)
        out[name] = report
        examples = [r.text for r in replies[:3]]
        print(f"{name}: closed {report['closed']['accuracy_by_ability']} "
              f"negatives {report['hallucination']['negative_accuracy']} examples {examples}")
    return out


def plot(result: dict, path: Path) -> None:
    import numpy as np

    plt = _common.figure()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(ABILITIES))
    multi = [result["accuracy_by_ability"].get(a, 0) for a in ABILITIES]
    single = [result["single_image_accuracy_by_ability"].get(a, 0) for a in ABILITIES]
    axes[0].bar(x - 0.2, multi, 0.4, label="all images")
    axes[0].bar(x + 0.2, single, 0.4, label="last image only")
    axes[0].axhline(0.25, color="gray", ls=":", lw=1, label="chance")
    axes[0].axhline(0.8, color="r", ls="--", lw=0.8, label="goal (mean) 0.8")
    axes[0].set_xticks(x, ABILITIES)
    axes[0].set(ylim=(0, 1.05), ylabel="accuracy", title="held-out closed questions")
    axes[0].legend(fontsize=8)
    h = result["hallucination"]
    prem = h["negative_accuracy_by_premise"]
    names = ["all negatives", *prem, "positives kept"]
    vals = [h["negative_accuracy"], *prem.values(), h["positive_accuracy"]]
    axes[1].bar(range(len(names)), vals, color=["tab:red"] * (len(names) - 1) + ["tab:green"])
    axes[1].axhline(0.7, color="r", ls="--", lw=0.8, label="goal 0.7")
    axes[1].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    axes[1].set(ylim=(0, 1.05), title="false premises rejected (MedHallTune-style)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"DuoMind VLM, {result['setup']['parameters'] / 1e6:.2f}M parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="instruction-tuning steps (default 8000; quick 3)")
    p.add_argument("--align_steps", type=int, default=None, help="caption pre-alignment steps (default 150; quick 2)")
    p.add_argument("--n_train", type=int, default=5600,
                   help="training questions per Med-MIM ability (premise questions: twice as many)")
    p.add_argument("--stop_at", type=int, default=0, help="stop instruction tuning at this step (resume later)")
    p.add_argument("--time_limit_min", type=float, default=0,
                   help="stop training after this many minutes with a checkpoint; run again to continue")
    args = p.parse_args()
    out = _common.out_dir(args)
    q = args.quick
    # each training set size gets its own cache (data and checkpoints); the test set is the same for all
    cache = f"medical-bench-n{args.n_train}"
    work = _common.scratch("med-bench-") if q else _common.CACHE / cache
    sizes = dict(n_train=4, n_test=3, captions=8) if q else dict(n_train=args.n_train, n_test=100, captions=1500)
    paths = make_data(work, **sizes)
    steps, align_steps = args.steps or (3 if q else 8000), args.align_steps or (2 if q else 150)
    batch = 4 if q else 16
    ckpt, times = run_training(work, paths, align_steps, steps, batch, "tiny" if q else "demo", args.threads,
                               args.stop_at, args.time_limit_min * 60)
    complete = ckpt.name == f"step-{steps:06d}" and ckpt.parent.name == "instruct"
    if not complete and (ckpt.parent.name != "instruct" or args.stop_at):
        print(f"training stopped at {ckpt}; run again to continue")
        return
    if not complete:  # out of time: score what there is, say so, and let the next run continue the training
        print(f"out of time at {ckpt.name} of {steps}; evaluating this checkpoint (run again to continue)")
    reports = evaluate(ckpt, paths)
    from duomind.apps.medical.model import load_vlm

    model, _ = load_vlm(ckpt)
    multi = reports["test"]["closed"]["accuracy_by_ability"]
    single = reports["test_single"]["closed"]["accuracy_by_ability"]
    hall = reports["medhall_test"]["hallucination"]
    margins = {a: multi[a] - single[a] for a in multi if a in single}
    mean_acc = sum(multi.values()) / len(multi)
    result = {
        "accuracy_by_ability": multi,
        "mean_closed_accuracy": mean_acc,
        "single_image_accuracy_by_ability": single,
        "multi_minus_single_by_ability": margins,
        "negative_accuracy": hall["negative_accuracy"],
        "positive_accuracy": hall["positive_accuracy"],
        "hallucination": hall,
        "text_metrics": {"premise": reports["medhall_test"]["text"]},
        "goals": {"mean_closed_accuracy_ge_0.8": mean_acc >= 0.8,
                  "negative_accuracy_ge_0.7": (hall["negative_accuracy"] or 0) >= 0.7,
                  "temporal_margin_ge_0.2": margins.get("temporal", 0) >= 0.2,
                  "comparison_margin_ge_0.2": margins.get("comparison", 0) >= 0.2},
        "min_margin_temporal_comparison": min(margins.get("temporal", 0), margins.get("comparison", 0)),
        "failures": sum(r["n_failed"] for r in reports.values()),
        "setup": {"parameters": sum(p.numel() for p in model.parameters()), "decoder_preset": "tiny" if q else "demo",
                  "image_size": 32, "patch_size": 16, "tokens_per_image": model.config.n_patches,
                  "align_steps": align_steps, "instruct_steps": steps, "batch": batch, **sizes,
                  "instruct_steps_done": int(ckpt.name.split("-")[1]), "training_complete": complete,
                  "test_closed_per_ability": reports["test"]["closed"]["n_by_ability"],
                  "test_premise_items": hall["n_negative"] + hall["n_positive"], "chance": 0.25, **times},
        "quick": q,
    }
    _common.write("medical", result, out)
    plot(result, out / "medical.png")
    print(f"wrote {out / 'medical.png'}")


if __name__ == "__main__":
    main()
