"""Dual-system training (Pangu Embedded Stage 2, arXiv 2505.22375): one model, fast / slow / auto modes.

Stages, each skipped when its output exists (so an interrupted run resumes):

1. data: synthetic verifiable tasks over several difficulty levels (`duomind data make`), a tokenizer.
2. pre-training (`pretrain_steps` > 0) on the task corpus, then the dual SFT: fast and slow chats of every
   training problem (or start from `init_from`). Then the optional Stage-1 steps (`duomind.reasoner.stage1`):
   iterative distillation with merging from a `teacher` (`distill`) and GRPO on Ray (`rl`).
3. labels: the student's own pass rates (fast mode; slow mode too for the `gain` rule) on a pool of training problems -> auto labels.
4. fusion SFT: fast, slow and auto chats of the pool (`duomind.reasoner.fusion`), from the dual model.
   Then, with `rl_steps` > 0, AdaptThink RL on auto mode (`duomind.reasoner.adapt`).
   With `auto_keep`, auto's think threshold is calibrated on new validation problems (`duomind.reasoner.router`).
5. eval: greedy accuracy and response tokens per difficulty level in each mode on held-out problems (auto at the
   calibrated threshold, and by argmax as well).
6. FIRP predictors for the final model (`firp_steps` > 0) and their measured speed-up in slow mode.
7. ship (`ship_to`): the model, predictors, held-back problems and a model card (duomind.reasoner.ship).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duomind.config import PACKINGS, ConfigError

EVAL_MODES = ("fast", "slow", "auto")
AUTO_RULES = ("pass_rate", "gain")


@dataclass
class DualConfig:
    """A dual-system (fast / slow / auto) training run.

    Attributes:
        out_dir: Run directory (data/, tokenizer/, pretrain/, sft/, teacher/, distill/, rl/, labels.jsonl, fusion/,
            report.json).
        init_from: A model already fine-tuned on fast and slow chats (skips pre-training and the dual SFT);
            its tokenizer is used.
        tasks: Task names of the synthetic data (`duomind data make`).
        difficulty: Difficulty levels of the synthetic data.
        n: Synthetic records to generate.
        heldout_fraction: Share of problems held back for evaluation.
        model_preset: Model size of a fresh dual model (duomind.config.PRESETS).
        vocab_size: Tokenizer vocabulary of a fresh model.
        seq_len: Training sequence length (tokens).
        batch_size: Sequences per training step.
        pretrain_steps: Next-token pre-training steps of a fresh model on the task corpus before the dual SFT.
        pretrain_lr: Peak learning rate of the pre-training.
        pretrain_packing: How the corpus fills pre-training windows (TrainConfig.packing): "best_fit" keeps every
            document whole, "concat" splits those that cross a window edge.
        pretrain_work_lines: Pre-train on the corpus with its working one step a line, as the slow chats' think
            span writes it (`data/corpus-lines.txt`); the tokenizer still learns from `corpus.txt`.
        sft_steps: Steps of the dual (fast + slow) SFT.
        sft_lr: Peak learning rate of the dual SFT.
        teacher: Distillation teacher: a checkpoint path (DuoMind or local Hugging Face), or a mapping
            (model_preset, model, steps, lr) to train one here on the slow chats.
        distill: DistillConfig fields of Stage-1 iterative distillation from the dual SFT model (null: skip).
        rl: RLConfig fields of Stage-1 GRPO on Ray after distillation (null: skip; needs the [rl] extra).
        label_pool: Training problems whose pass rates label auto mode.
        label_samples: Samples per pool problem in each mode the rule needs.
        label_temperature: Sampling temperature of those samples.
        auto_rule: How auto labels are made: `pass_rate` (fast where the fast pass rate reaches
            `fast_threshold`; Pangu Embedded) or `gain` (slow only where thinking raises the pass rate by
            `min_gain` or more; AdaptThink's optimum, costs slow-mode samples of the pool too).
        fast_threshold: Pass rate from which a problem's auto target is the fast answer (`pass_rate` rule).
        min_gain: Slow minus fast pass rate from which a problem's auto target is the slow answer (`gain` rule).
        fusion_steps: Steps of the fusion SFT.
        fusion_lr: Peak learning rate of the fusion SFT.
        auto_keep: Calibrate auto mode's think threshold (`router.json`) to keep this share of slow mode's
            accuracy on `router_problems` newly generated problems (None: auto thinks when `<think>` is its argmax).
        router_problems: Validation problems for that calibration (no prompt shared with the data).
        max_new_tokens: Longest response in labelling and evaluation.
        eval_limit: Held-out problems to evaluate (0: all).
        rl_steps: Steps of AdaptThink RL after the fusion SFT (0: none).
        rl_prompts: Training problems per RL step.
        rl_group: Responses per problem (half fast, half slow).
        rl_delta: AdaptThink's bonus for not thinking.
        rl_lr: RL learning rate.
        firp_steps: Training steps of FIRP predictors for the final model (0: none).
        firp_batch_size: Windows per FIRP training step.
        speed_prompts: Held-out slow-mode prompts timed with and without FIRP.
        ship_to: Directory to ship the finished model to (e.g. assets/duomind-reasoner; None: don't).
        gen_batch_size: Prompts per generation batch.
        seed: Seed of data, sampling and training.
        threads: torch intra-op threads (None: torch's default).
        progress: Show progress bars.
    """

    out_dir: str = "runs/reasoner"
    init_from: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["add", "arith", "sequence", "word"])
    difficulty: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    n: int = 16000
    heldout_fraction: float = 0.03
    model_preset: str = "demo"
    vocab_size: int = 512
    seq_len: int = 160
    batch_size: int = 32
    pretrain_steps: int = 0
    pretrain_lr: float = 3e-3
    pretrain_packing: str = "concat"
    pretrain_work_lines: bool = False
    sft_steps: int = 3000
    sft_lr: float = 2e-3
    teacher: str | dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    rl: dict[str, Any] | None = None
    label_pool: int = 2000
    label_samples: int = 4
    label_temperature: float = 0.7
    auto_rule: str = "pass_rate"
    fast_threshold: float = 0.75
    min_gain: float = 0.25
    fusion_steps: int = 800
    fusion_lr: float = 5e-4
    auto_keep: float | None = None
    router_problems: int = 400
    max_new_tokens: int = 160
    eval_limit: int = 400
    rl_steps: int = 0
    rl_prompts: int = 16
    rl_group: int = 8
    rl_delta: float = 0.05
    rl_lr: float = 2e-5
    firp_steps: int = 0
    firp_batch_size: int = 16
    speed_prompts: int = 16
    ship_to: str | None = None
    gen_batch_size: int = 64
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fast_threshold <= 1.0:
            raise ConfigError(f"fast_threshold={self.fast_threshold} must lie in (0, 1]: it is a pass rate.")
        if self.pretrain_packing not in PACKINGS:
            raise ConfigError(f"pretrain_packing={self.pretrain_packing!r} is not one of {', '.join(PACKINGS)}.")
        if self.auto_rule not in AUTO_RULES:
            raise ConfigError(f"auto_rule={self.auto_rule!r} is not one of {', '.join(AUTO_RULES)}.")
        if not 0.0 < self.min_gain <= 1.0:
            raise ConfigError(f"min_gain={self.min_gain} must lie in (0, 1]: it is a difference of pass rates.")
        if self.auto_keep is not None and not 0.0 < self.auto_keep <= 1.0:
            raise ConfigError(f"auto_keep={self.auto_keep} must lie in (0, 1]: it is a share of slow mode's accuracy.")
        for name in ("n", "router_problems", "label_pool", "label_samples", "max_new_tokens", "gen_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.sft_steps < 0 or self.fusion_steps < 1 or self.pretrain_steps < 0:
            raise ConfigError("pretrain_steps and sft_steps must be >= 0 and fusion_steps >= 1.")
        from duomind.reasoner.stage1 import check

        check(self.teacher, self.distill, self.rl)
        if self.rl_steps < 0 or self.rl_group < 2 or self.rl_group % 2:
            raise ConfigError(f"rl_steps={self.rl_steps} must be >= 0 and rl_group={self.rl_group} an even number "
                              ">= 2 (AdaptThink samples half of each group fast, half slow).")

    @property
    def label_rule(self) -> str:
        """The auto-label rule in words, e.g. `gain >= 0.25`; recorded with every label."""
        return f"gain >= {self.min_gain}" if self.auto_rule == "gain" else f"pass_rate >= {self.fast_threshold}"


def _train(cfg: DualConfig, out: Path, data: Path, steps: int, lr: float, mode: str = "sft", **start: Any) -> Path:
    from duomind.config import TrainConfig
    from duomind.train.loop import train

    return train(TrainConfig(out_dir=str(out), mode=mode, data=str(data), max_steps=steps, lr=lr, min_lr=lr / 10,
                             warmup_steps=min(30, steps // 10), seq_len=cfg.seq_len, global_batch_size=cfg.batch_size,
                             micro_batch_size=cfg.batch_size, save_every=max(steps // 10, 1), log_every=20,
                             weight_decay=0.0, seed=cfg.seed, threads=cfg.threads, progress=cfg.progress, **start))


def training_tasks(data: Path) -> list:
    """The records of `data/tasks.jsonl` whose prompt is not held out: the problems every later step may train on.

    By prompt, as `duomind data make` splits: `heldout.jsonl` keeps one record per held-out prompt, so a filter by id
    would let the other records of a repeated prompt through."""
    from duomind.tasks import read_tasks

    held = {h.prompt for h in read_tasks(data / "heldout.jsonl")}
    return [t for t in read_tasks(data / "tasks.jsonl") if t.prompt not in held]


def evaluate_modes(model, tok, tasks, max_new_tokens: int, batch_size: int, progress: bool = False,
                   think_threshold: float | None = None, modes: tuple[str, ...] = EVAL_MODES) -> dict:
    """Greedy accuracy and response tokens per difficulty in each mode (auto at `think_threshold`, if given)."""
    from duomind.distill.loop import Verifier, evaluate

    verifier = Verifier()
    try:
        report = {m: evaluate(model, tok, tasks, m, max_new_tokens, batch_size, verifier, progress, items=True,
                              think_threshold=think_threshold) for m in modes}
    finally:
        verifier.close()
    return report


def calibrate_router(cfg: DualConfig, out: Path, data: Path, final: Path, tok) -> dict:
    """Calibrate (or reuse) auto's think threshold for `final` on new validation problems; `out/router.json`."""
    from collections import Counter

    from duomind.reasoner.router import ROUTER_FILE, calibrate, think_probs, validation_tasks
    from duomind.tasks import read_tasks, write_jsonl
    from duomind.tokenizer import THINK, chat_prompt, special_ids
    from duomind.train.checkpoint import atomic_write_text, load_model

    path = out / ROUTER_FILE
    if path.is_file():
        router = json.loads(path.read_text())
        if (Path(router["model"]).resolve() == final.resolve() and router["keep"] == cfg.auto_keep
                and router.get("problems") == cfg.router_problems):
            return router
    taken = [t.prompt for t in read_tasks(data / "tasks.jsonl")]  # training and held-out prompts alike
    val = validation_tasks(taken, cfg.tasks, cfg.difficulty, cfg.router_problems, cfg.seed + 1)
    write_jsonl(data / "validation.jsonl", val)
    model = load_model(final)
    ev = evaluate_modes(model, tok, val, cfg.max_new_tokens, cfg.gen_batch_size, cfg.progress, modes=("fast", "slow"))
    prompts = [chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode="auto") for t in val]
    p = think_probs(model, prompts, special_ids(tok)[THINK], cfg.gen_batch_size)
    f, s = ev["fast"]["items"], ev["slow"]["items"]
    router = {**calibrate(p, f["correct"], s["correct"], f["tokens"], s["tokens"], cfg.auto_keep),
              "model": str(final), "problems": cfg.router_problems, "tasks": dict(Counter(t.task for t in val))}
    if not router["slow_accuracy"]:
        print(f"warning: slow mode solved none of the {len(val)} validation problems, so auto will never think; "
              "train longer or raise router_problems.")
    atomic_write_text(path, json.dumps(router, indent=1))
    return router


def train_dual(cfg: DualConfig) -> dict:
    """Run (or resume) the dual-system pipeline; returns the report (also in out_dir/report.json)."""
    import torch

    from duomind.progress import progress_bar
    from duomind.reasoner.fusion import auto_label, fusion_records, gain_label, pass_rates
    from duomind.tasks import corpus_text, read_tasks, write_jsonl
    from duomind.tasks.cli import make
    from duomind.tokenizer import load_tokenizer, train_cli
    from duomind.train.checkpoint import atomic_write_text, load_model, resolve_checkpoint

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    data = out / "data"
    if not (data / "sft.jsonl").is_file():
        make(out_dir=str(data), n=cfg.n, seed=cfg.seed, tasks=cfg.tasks, difficulty=cfg.difficulty,
             heldout_fraction=cfg.heldout_fraction)
    train_tasks = training_tasks(data)
    if cfg.init_from:
        dual = resolve_checkpoint(cfg.init_from)
    else:
        tok_dir = out / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            train_cli(str(data / "corpus.txt"), out=str(tok_dir), vocab_size=cfg.vocab_size)
        start: dict[str, Any] = {"tokenizer": str(tok_dir), "model_preset": cfg.model_preset}
        if cfg.pretrain_steps:
            corpus = data / "corpus.txt"
            if cfg.pretrain_work_lines:
                corpus = data / "corpus-lines.txt"
                if not corpus.is_file():
                    atomic_write_text(corpus, corpus_text(train_tasks, cfg.seed, work_lines=True))
            pre = _train(cfg, out / "pretrain", corpus, cfg.pretrain_steps, cfg.pretrain_lr, "pretrain",
                         packing=cfg.pretrain_packing, **start)
            start = {"init_from": str(pre)}
        dual = _train(cfg, out / "sft", data / "sft.jsonl", cfg.sft_steps, cfg.sft_lr, **start)
    from duomind.reasoner.stage1 import run_stage1

    dual, stage1 = run_stage1(cfg, out, data, dual, train_tasks, lambda *a, **k: _train(cfg, *a, **k))
    tok = load_tokenizer(dual)

    labels_path = out / "labels.jsonl"
    pool = random.Random(cfg.seed).sample(train_tasks, min(cfg.label_pool, len(train_tasks)))
    rule = cfg.label_rule
    if not labels_path.is_file():
        model = load_model(dual)
        rates = {}
        for mode in ("fast", "slow") if cfg.auto_rule == "gain" else ("fast",):
            partial = out / ("labels.partial.jsonl" if mode == "fast" else f"labels-{mode}.partial.jsonl")
            with progress_bar(f"auto labels ({mode} samples)", len(pool), enabled=cfg.progress) as advance:
                rates[mode] = pass_rates(model, tok, pool, mode, cfg.label_samples, cfg.label_temperature,
                                         cfg.max_new_tokens, cfg.gen_batch_size, cfg.seed, partial, advance)
        rows = []
        for i, t in enumerate(pool):
            row = {"id": t.id, "difficulty": t.difficulty, "rule": rule, "model": str(dual),
                   **{f"{m}_pass_rate": r[i] for m, r in rates.items()}}
            row["label"] = (gain_label(row["fast_pass_rate"], row["slow_pass_rate"], cfg.min_gain)
                            if cfg.auto_rule == "gain" else auto_label(row["fast_pass_rate"], cfg.fast_threshold))
            rows.append(row)
        write_jsonl(labels_path, rows)
    labels = {r["id"]: r for r in map(json.loads, labels_path.read_text().splitlines())}
    first = next(iter(labels.values()))
    made_with, made_from = first.get("rule", f"pass_rate >= {cfg.fast_threshold}"), first.get("model", str(dual))
    # the fusion data and model here follow the old labels: keep them, start elsewhere
    if made_with != rule:
        raise ConfigError(f"{labels_path} was labelled with `{made_with}`, this config asks for `{rule}`; "
                          "use a new out_dir (with init_from: the dual model) to label by another rule.")
    if Path(made_from).resolve() != Path(dual).resolve():
        raise ConfigError(f"{labels_path} holds the pass rates of {made_from}, but this run's labels would come from "
                          f"{dual} (a changed init_from or Stage-1 step); use a new out_dir.")
    fusion = out / "fusion.jsonl"
    if not fusion.is_file():
        write_jsonl(fusion, fusion_records(pool, [labels[t.id]["label"] for t in pool]))
    final = fused = _train(cfg, out / "fusion", fusion, cfg.fusion_steps, cfg.fusion_lr, init_from=str(dual))
    if cfg.rl_steps:
        from duomind.reasoner.adapt import AdaptConfig, train_adapt

        final = train_adapt(fused, out / "adapt", train_tasks, AdaptConfig(
            steps=cfg.rl_steps, prompts=cfg.rl_prompts, group=cfg.rl_group, delta=cfg.rl_delta, lr=cfg.rl_lr,
            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed), cfg.progress)

    router = calibrate_router(cfg, out, data, final, tok) if cfg.auto_keep is not None else None
    threshold = router["think_threshold"] if router else None
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    heldout = read_tasks(data / "heldout.jsonl")
    if cfg.eval_limit:
        heldout = random.Random(cfg.seed).sample(heldout, min(cfg.eval_limit, len(heldout)))
    if (Path(report.get("model", "")).resolve() != final.resolve() or "items" not in report["eval"]["fast"]
            or report.get("router") != router):
        model = load_model(final)
        report = {"model": str(final), "dual_model": str(dual), "stage1": stage1, "config": dataclasses.asdict(cfg),
                  "eval": evaluate_modes(model, tok, heldout, cfg.max_new_tokens, cfg.gen_batch_size, cfg.progress,
                                         threshold),
                  "labels": label_summary(list(labels.values())), "router": router}
        if router:  # what calibration changed: auto deciding by its argmax
            report["auto_argmax"] = evaluate_modes(model, tok, heldout, cfg.max_new_tokens, cfg.gen_batch_size,
                                                   cfg.progress, modes=("auto",))["auto"]
        if final != fused:  # what RL changed
            report["eval_before_rl"] = evaluate_modes(load_model(fused), tok, heldout, cfg.max_new_tokens,
                                                      cfg.gen_batch_size, cfg.progress)  # argmax: calibrated after RL
        atomic_write_text(report_path, json.dumps(report, indent=1))
    predictors = out / "predictors" / final.parent.name  # per model: predictors fit the weights they were trained on
    if cfg.firp_steps and "firp" not in report:
        from duomind.generate.drafters import predictor_drafter
        from duomind.generate.speculate_cli import train_cli as train_predictors

        if not (predictors / "drafter.json").is_file():
            train_predictors(str(final), str(predictors), data=str(data / "sft.jsonl"), steps=cfg.firp_steps,
                             batch_size=cfg.firp_batch_size, seq_len=cfg.seq_len, seed=cfg.seed, threads=cfg.threads)
        model = load_model(final)
        report["firp"] = firp_speed(model, tok, predictor_drafter(model, predictors),
                                    heldout[:cfg.speed_prompts], cfg.max_new_tokens)
        report["config"] = dataclasses.asdict(cfg)
        atomic_write_text(report_path, json.dumps(report, indent=1))
    if cfg.ship_to:
        from duomind.reasoner.router import ROUTER_FILE
        from duomind.reasoner.ship import ship

        ship(final, cfg.ship_to, report, predictors if "firp" in report else None, data / "heldout.jsonl",
             out / ROUTER_FILE if router else None)
        print(f"shipped {final} to {cfg.ship_to}")
    return report


def firp_speed(model, tok, drafter, tasks, max_new_tokens: int, rounds: int = 3) -> dict:
    """Slow-mode answers at batch 1, greedy: plain decoding vs FIRP speculative decoding, interleaved rounds.

    Speculative decoding is lossless, so the outputs must be token for token those of plain greedy decoding.
    """
    import statistics
    import time

    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.generate.speculative import Stats, speculative_generate
    from duomind.tokenizer import chat_prompt

    prompts = [chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode="slow") for t in tasks]
    stops = stop_ids(tok)

    def plain(_: Stats) -> list[list[int]]:
        return [list(generate(model, [p], max_new_tokens=max_new_tokens, stop_tokens=stops)[0]) for p in prompts]

    def firp(stats: Stats) -> list[list[int]]:
        return [speculative_generate(model, p, drafter, max_new_tokens, stop_tokens=stops, stats=stats)
                for p in prompts]

    stats = Stats()
    reference, drafted = plain(Stats()), firp(stats)  # also the warm-up
    times: dict[str, list[float]] = {"plain": [], "firp": []}
    for r in range(rounds):
        for name, run in ((("plain", plain), ("firp", firp)) if r % 2 == 0 else (("firp", firp), ("plain", plain))):
            t0 = time.perf_counter()
            run(Stats())
            times[name].append(time.perf_counter() - t0)
    tokens = sum(len(o) for o in reference)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"prompts": len(prompts), "tokens": tokens, "rounds": rounds, "seconds": times,
            "plain_tokens_per_s": tokens / median["plain"], "firp_tokens_per_s": tokens / median["firp"],
            "speedup": median["plain"] / median["firp"], "equal_outputs": drafted == reference,
            "mean_accepted_length": stats.mean_accepted_length,
            "acceptance_per_position": stats.acceptance_per_position}


def label_summary(rows: list[dict]) -> dict:
    """Share of auto labels that are `fast`, overall and per difficulty level."""
    by_level: dict[str, list[bool]] = {}
    for r in rows:
        by_level.setdefault(str(r["difficulty"]), []).append(r["label"] == "fast")
    fast = [r["label"] == "fast" for r in rows]
    return {"n": len(rows), "fast_share": sum(fast) / max(len(fast), 1),
            "fast_share_by_difficulty": {k: sum(v) / len(v) for k, v in sorted(by_level.items())}}


def train_cli(cfg: DualConfig) -> None:
    """Dual-system training: fast + slow SFT, auto labels, fusion SFT, optional RL, eval, FIRP predictors, ship.

    Resumes an existing run in out_dir at the stage where it stopped.
    """
    from rich.console import Console
    from rich.table import Table

    report = train_dual(cfg)
    table = Table(title=f"fast / slow / auto on held-out problems ({cfg.out_dir}/report.json)")
    for col in ("mode", "accuracy", "by difficulty", "tokens", "thinks"):
        table.add_column(col)
    for mode, ev in report["eval"].items():
        table.add_row(mode, f"{ev['accuracy']:.1%}", " ".join(f"L{k} {v:.0%}" for k, v in ev["by_difficulty"].items()),
                      f"{ev['mean_tokens']:.0f}", f"{ev['think_share']:.0%}")
    Console().print(table)
    print(f"model: {report['model']}")
