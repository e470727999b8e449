"""Iterative distillation with inter-iteration model merging (Pangu Embedded stage 1a, arXiv 2505.22375).

Each iteration t, starting from the student theta_{t-1}:

1. prompts: take the next slice of the (seeded, shuffled) prompt pool and remove near duplicates
   (MinHash-LSH) within it, of held-out evaluation prompts and of prompts earlier iterations considered;
   done first because it is cheap and spares the teacher sampling prompts that would be dropped;
2. teacher: the teacher samples `teacher_samples` responses per prompt; `duomind.rewards` verifies them
   (correct answer and the mode's think/answer format); the shortest correct one is kept;
3. difficulty: the current student samples `student_samples` responses per kept prompt; difficulty =
   1 - its pass rate;
4. select: a balanced mix weighted toward medium difficulty (always- and never-solved dropped), or a
   random subset of the same size, or everything;
5. sft: the student is fine-tuned from theta_{t-1} on the selected prompts and their teacher responses,
   one run per seed in `sft_seeds`;
6. merge: theta_t = theta_{t-1} + lambda * mean_i(theta_t^i - theta_{t-1}) over the last
   `merge_checkpoints` checkpoints of every run (task arithmetic; method configurable);
7. eval: theta_t answers the held-out problems greedily; accuracy per difficulty level;
   then a report (JSON + PNG) for the iteration and for the run so far.

Every stage writes its outputs atomically and is recorded in `state.json` when complete, so an
interrupted run resumes at the stage where it stopped (inside teacher and student sampling, at the
chunk where it stopped; inside fine-tuning, at the trainer's last checkpoint).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from duomind.config import ConfigError
from duomind.distill.config import RESUMABLE_CHANGES, DistillConfig, size_at, to_dict
from duomind.distill.dedup import dedup
from duomind.distill.select import bin_of, difficulty, select_balanced, select_random, shortest_correct
from duomind.progress import progress_bar
from duomind.tasks import Task, read_tasks, write_jsonl

STAGES = ("prompts", "teacher", "difficulty", "select", "sft", "merge", "eval", "report")


# --------------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------------


class RunState:
    """`state.json`: completed stages per iteration and the student checkpoint each iteration produced."""

    def __init__(self, out: Path, cfg: DistillConfig) -> None:
        from duomind.train.checkpoint import atomic_write_text

        self.out, self.path = out, out / "state.json"
        self._write = atomic_write_text
        saved = out / "distill_config.yaml"
        if saved.is_file():
            _check_same_run(yaml.safe_load(saved.read_text()), cfg, out, self._done_iterations())
        out.mkdir(parents=True, exist_ok=True)
        self._write(saved, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"done": {}, "student": {}}

    def _done_iterations(self) -> int:
        if not self.path.is_file():
            return 0
        done = json.loads(self.path.read_text())["done"]
        return sum(1 for it, stages in done.items() if int(it) > 0 and "report" in stages)

    def is_done(self, it: int, stage: str) -> bool:
        return stage in self.data["done"].get(str(it), [])

    def mark(self, it: int, stage: str, **extra: Any) -> None:
        self.data["done"].setdefault(str(it), []).append(stage)
        for key, value in extra.items():
            self.data[key][str(it)] = value
        self._write(self.path, json.dumps(self.data, indent=1))

    def student(self, it: int) -> str:
        return self.data["student"][str(it)]


def _check_same_run(saved: dict, cfg: DistillConfig, out: Path, done_iterations: int) -> None:
    now = to_dict(cfg)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        what = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise ConfigError(f"{out} holds a distillation run with a different config ({what}). Resume with the "
                          f"saved config ({out / 'distill_config.yaml'}) or choose a new out_dir; only "
                          f"{sorted(RESUMABLE_CHANGES)} may change on resume.")
    old = DistillConfig(**{**saved, "progress": False})
    for it in range(1, done_iterations + 1):
        if it <= old.iterations and size_at(old, it) != size_at(cfg, it):
            raise ConfigError(f"select_size of the finished iteration {it} changed ({size_at(old, it)} -> "
                              f"{size_at(cfg, it)}); only sizes of later iterations may change on resume.")


# --------------------------------------------------------------------------------------------------
# Generation and verification
# --------------------------------------------------------------------------------------------------


def load_any(path: str):
    """A DuoMind checkpoint (verified) or a local HF model of a supported architecture, as a DuoMind model."""
    from duomind.train.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model_type = json.loads((ckpt / "config.json").read_text()).get("model_type")
    if model_type == "duomind":
        return load_model(ckpt), ckpt
    from duomind.convert import load_hf_model_as_duomind

    return load_hf_model_as_duomind(ckpt), ckpt


def reply_text(tok, ids: Sequence[int]) -> str:
    """Decoded response up to the end of the turn (special reasoning tokens kept: <think> is one)."""
    text = tok.decode(list(ids), skip_special_tokens=False)
    for stop in ("<|im_end|>", "<|endoftext|>"):
        text = text.split(stop)[0]
    return text.strip()


def reward_record(task: Task, response: str, mode: str, rid: str) -> dict:
    """A `duomind.rewards` record for a task response: code runs its tests, every other task is math."""
    rec = {"id": rid, "prompt": task.prompt, "response": response, "mode": mode}
    if task.task == "code":
        return {**rec, "task": "code", "tests": list(task.tests)}
    return {**rec, "task": "math", "answer": task.answer}


class Verifier:
    """Correct = the MARS correctness source scores 1 and the response has its mode's format."""

    def __init__(self) -> None:
        from duomind.rewards.batch import Scorer
        from duomind.rewards.config import RewardConfig

        # raw components only: normalisation and judge are for RL rewards, not for a pass/fail filter
        self.scorer = Scorer(RewardConfig(normalize=False), workers=0)

    def check(self, records: list[dict]) -> list[bool]:
        from duomind.rewards.batch import CORRECTNESS

        out = []
        for r in self.scorer.score(records):
            comps = r["components"]
            out.append(comps.get(CORRECTNESS.get(r["task"], ""), 0.0) == 1.0 and comps.get("format", 1.0) == 1.0)
        return out

    def close(self) -> None:
        self.scorer.close()


def sample_chunked(model, tok, tasks: list[Task], mode: str, n: int, temperature: float, top_p: float | None,
                   max_new_tokens: int, batch_size: int, seed: int, partial: Path, verifier: Verifier,
                   advance: Callable[[int], None]) -> list[dict]:
    """Sample `n` responses per task and verify them, in chunks appended to `partial` (resumable).

    Each chunk's sampling seed depends only on (seed, chunk), so a resumed run samples what the
    uninterrupted one would have. Returns rows {"responses", "correct"} in task order.
    """
    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tokenizer import chat_prompt

    per_chunk = max(1, batch_size // n)
    chunks = [list(range(s, min(s + per_chunk, len(tasks)))) for s in range(0, len(tasks), per_chunk)]
    done: dict[int, list[dict]] = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by the interruption: sample that chunk again
            done[row["chunk"]] = row["rows"]
        # keep only whole lines, so chunks appended from here on are not hidden behind a torn one
        from duomind.train.checkpoint import atomic_write_text

        atomic_write_text(partial, "".join(json.dumps({"chunk": c, "rows": r}) + "\n" for c, r in done.items()))
    advance(sum(len(chunks[c]) for c in done if c < len(chunks)))
    stops = stop_ids(tok)
    with partial.open("a") as fh:
        for c, idx in enumerate(chunks):
            if c in done:
                continue
            prompts = [chat_prompt(tok, [{"role": "user", "content": tasks[i].prompt}], mode=mode)
                       for i in idx for _ in range(n)]
            out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           stop_tokens=stops, seed=seed * 100_003 + c)
            texts = [reply_text(tok, o) for o in out]
            records = [reward_record(tasks[i], texts[k * n + j], mode, f"{i}/{j}")
                       for k, i in enumerate(idx) for j in range(n)]
            ok = verifier.check(records)
            rows = [{"responses": texts[k * n:(k + 1) * n], "correct": ok[k * n:(k + 1) * n]} for k in range(len(idx))]
            fh.write(json.dumps({"chunk": c, "rows": rows}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            done[c] = rows
            advance(len(idx))
    return [row for c in range(len(chunks)) for row in done[c]]




# --------------------------------------------------------------------------------------------------
# Evaluation and reports
# --------------------------------------------------------------------------------------------------


def evaluate(model, tok, tasks: list[Task], mode: str, max_new_tokens: int, batch_size: int, verifier: Verifier,
             progress: bool = False, items: bool = False, think_threshold: float | None = None) -> dict:
    """Greedy answers to `tasks`: accuracy per difficulty and task, response tokens, share of answers that thought.

    With `items`, also the per-task lists (`items`: correct, tokens, thought), in the order of `tasks`. In auto
    mode, `think_threshold` makes the first token a calibrated choice (`duomind.reasoner.router`).
    """
    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tokenizer import chat_prompt

    correct: list[bool] = []
    lengths: list[int] = []
    thought: list[bool] = []
    with progress_bar("eval", len(tasks), enabled=progress) as advance:
        for s in range(0, len(tasks), batch_size):
            part = tasks[s:s + batch_size]
            prompts = [chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode=mode) for t in part]
            if mode == "auto" and think_threshold is not None:
                from duomind.reasoner.router import generate_auto

                out = generate_auto(model, tok, prompts, max_new_tokens, think_threshold, stop_ids(tok))
            else:
                out = generate(model, prompts, max_new_tokens=max_new_tokens, stop_tokens=stop_ids(tok))
            texts = [reply_text(tok, o) for o in out]
            lengths += [len(o) for o in out]
            thought += ["<think>" in x for x in texts]
            correct += verifier.check([reward_record(t, x, mode, str(s + i)) for i, (t, x) in enumerate(zip(part, texts))])
            advance(len(part))
    def mean_by(key, values) -> dict[str, float]:
        groups: dict[str, list] = {}
        for t, v in zip(tasks, values):
            groups.setdefault(str(key(t)), []).append(v)
        return {k: sum(v) / len(v) for k, v in sorted(groups.items())}

    level = lambda t: t.difficulty  # noqa: E731
    report = {"accuracy": sum(correct) / max(len(correct), 1), "n": len(correct),
              "by_difficulty": mean_by(level, correct), "by_task": mean_by(lambda t: t.task, correct),
              "mean_tokens": sum(lengths) / max(len(lengths), 1), "tokens_by_difficulty": mean_by(level, lengths),
              "think_share": sum(thought) / max(len(thought), 1), "think_share_by_difficulty": mean_by(level, thought)}
    if items:
        report["items"] = {"id": [t.id for t in tasks], "correct": correct, "tokens": lengths, "thought": thought}
    return report


def plot_report(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy by iteration (overall and per level) and the selected data's difficulty mix per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    its = [r["iteration"] for r in rows]
    ax1.plot(its, [r["eval"]["accuracy"] for r in rows], "o-", color="k", lw=2, label="all")
    levels = sorted({lvl for r in rows for lvl in r["eval"]["by_difficulty"]})
    for lvl in levels:
        ax1.plot(its, [r["eval"]["by_difficulty"].get(lvl, float("nan")) for r in rows], ".--", label=f"level {lvl}")
    ax1.set_xlabel("iteration (0 = starting student)")
    ax1.set_ylabel("held-out accuracy (greedy)")
    ax1.set_xticks(its)
    ax1.legend(fontsize=7)
    sel = [r for r in rows if r.get("selected")]
    bottom = [0] * len(sel)
    for b, color in (("easy", "tab:green"), ("medium", "tab:orange"), ("hard", "tab:red"), ("unknown", "tab:gray")):
        vals = [r["selected"]["by_bin"].get(b, 0) for r in sel]
        if any(vals):
            ax2.bar([r["iteration"] for r in sel], vals, bottom=bottom, color=color, label=b)
            bottom = [x + y for x, y in zip(bottom, vals)]
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("selected prompts")
    ax2.set_xticks([r["iteration"] for r in sel] or [1])
    if any(bottom):  # random selection records no difficulty bins: nothing to label
        ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _last_checkpoints(run: Path, k: int) -> list[Path]:
    from duomind.train.checkpoint import verify_checkpoint

    ckpts = sorted(p for p in run.glob("step-*") if (p / "COMPLETE").is_file())
    for p in ckpts[-k:]:
        verify_checkpoint(p)
    return ckpts[-k:]


def distill(cfg: DistillConfig) -> dict:
    """Run (or resume) iterative distillation; returns the run report ({"iterations": [...], ...})."""
    import torch

    from duomind.tokenizer import load_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    state = RunState(out, cfg)
    pool = read_tasks(cfg.prompts)
    evals = read_tasks(cfg.eval_data)
    if cfg.eval_limit:
        evals = random.Random(cfg.seed).sample(evals, min(cfg.eval_limit, len(evals)))
    order = list(range(len(pool)))
    random.Random(cfg.seed).shuffle(order)

    from duomind.train.checkpoint import resolve_checkpoint

    if not state.is_done(0, "eval"):
        state.data["student"]["0"] = str(resolve_checkpoint(cfg.student))
    student_tok = load_tokenizer(resolve_checkpoint(cfg.student))
    teacher = teacher_tok = None
    verifier = Verifier()
    report_rows = [json.loads((out / f"iter-{i}" / "report.json").read_text())
                   for i in range(cfg.iterations + 1) if state.is_done(i, "report")]
    try:
        if not state.is_done(0, "eval"):
            it0 = out / "iter-0"
            it0.mkdir(parents=True, exist_ok=True)
            model, _ = load_any(state.data["student"]["0"])
            ev = evaluate(model, student_tok, evals, cfg.mode, cfg.max_new_tokens, cfg.batch_size, verifier, cfg.progress)
            row = {"iteration": 0, "student": state.data["student"]["0"], "eval": ev}
            write_json(it0 / "report.json", row)
            state.mark(0, "eval")
            state.mark(0, "report")
            report_rows = [row]
        for t in range(1, cfg.iterations + 1):
            if state.is_done(t, "report"):
                continue
            it = out / f"iter-{t}"
            it.mkdir(parents=True, exist_ok=True)
            current = state.student(t - 1)
            clock = Clock(it / "timings.json")
            # 1. prompts
            if not state.is_done(t, "prompts"):
                with clock("prompts"):
                    _stage_prompts(cfg, t, it, pool, order, evals, out)
                state.mark(t, "prompts")
            prompts = [Task.from_dict(r["task"]) for r in read_rows(it / "prompts.jsonl")]
            # 2. teacher
            if not state.is_done(t, "teacher"):
                if teacher is None:
                    teacher, teacher_ckpt = load_any(cfg.teacher)
                    teacher_tok = load_tokenizer(teacher_ckpt)
                with clock("teacher"):
                    _stage_teacher(cfg, t, it, prompts, teacher, teacher_tok, student_tok, verifier)
                state.mark(t, "teacher")
            usable = [r for r in read_rows(it / "teacher.jsonl") if r["best"] is not None]
            # 3. difficulty for the current student
            if not state.is_done(t, "difficulty"):
                if cfg.selection == "balanced":
                    with clock("difficulty"):
                        _stage_difficulty(cfg, t, it, usable, current, student_tok, verifier)
                state.mark(t, "difficulty")
            # 4. select
            if not state.is_done(t, "select"):
                with clock("select"):
                    _stage_select(cfg, t, it, usable)
                state.mark(t, "select")
            # 5. fine-tune
            if not state.is_done(t, "sft"):
                with clock("sft"):
                    _stage_sft(cfg, it, current)
                state.mark(t, "sft")
            # 6. merge
            if not state.is_done(t, "merge"):
                with clock("merge"):
                    nxt = _stage_merge(cfg, it, current)
                state.mark(t, "merge", student=str(nxt))
            # 7. eval and report
            if not state.is_done(t, "eval"):
                model, _ = load_any(state.student(t))
                with clock("eval"):
                    ev = evaluate(model, student_tok, evals, cfg.mode, cfg.max_new_tokens, cfg.batch_size, verifier,
                                  cfg.progress)
                write_json(it / "eval.json", ev)
                state.mark(t, "eval")
            row = _iteration_report(cfg, t, it, state.student(t), clock.seconds)
            write_json(it / "report.json", row)
            report_rows = [r for r in report_rows if r["iteration"] < t] + [row]
            plot_report(report_rows, it / "report.png", f"distillation, iteration {t} ({out.name})")
            state.mark(t, "report")
            _write_run_report(cfg, out, report_rows)
    finally:
        verifier.close()
    return _write_run_report(cfg, out, report_rows)


class Clock:
    """Seconds per stage, kept in a JSON file so a resumed iteration still reports the earlier stages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - t0, 2)
        write_json(self.path, self.seconds)


def write_json(path: Path, data: Any) -> None:
    from duomind.train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))


def _stage_prompts(cfg: DistillConfig, t: int, it: Path, pool: list[Task], order: list[int], evals: list[Task],
                   out: Path) -> None:
    n = cfg.prompts_per_iteration
    idx = [order[(k % len(order))] for k in range((t - 1) * n, t * n)]
    # every prompt an earlier iteration considered, not only those it trained on: a rephrasing of a prompt
    # seen before adds no diversity, whichever way that prompt was used
    seen = [r["task"]["prompt"] for i in range(1, t) for r in read_rows(out / f"iter-{i}" / "prompts.jsonl")]
    texts = [pool[i].prompt for i in idx]
    kept, dropped = dedup(texts, against=[e.prompt for e in evals] + seen, threshold=cfg.dedup_threshold,
                          num_perm=cfg.dedup_num_perm, ngram=cfg.dedup_ngram, seed=cfg.seed + 1)
    rows = [{"key": f"{t}-{k}", "pool_index": idx[k], "task": pool[idx[k]].to_dict()} for k in kept]
    write_jsonl(it / "prompts.jsonl", rows)
    n_eval = len(evals)
    kinds = Counter("eval" if d.startswith("a") and int(d[1:]) < n_eval else "earlier" if d.startswith("a")
                    else "within" for d in dropped.values())
    write_json(it / "dedup.json", {"considered": len(idx), "kept": len(kept), "dropped": len(dropped),
                                   "near_eval": kinds["eval"], "near_earlier_iterations": kinds["earlier"],
                                   "near_each_other": kinds["within"]})


def _stage_teacher(cfg: DistillConfig, t: int, it: Path, prompts: list[Task], teacher, teacher_tok, student_tok,
                   verifier: Verifier) -> None:
    keys = [r["key"] for r in read_rows(it / "prompts.jsonl")]
    with progress_bar(f"teacher {t}", len(prompts), enabled=cfg.progress) as advance:
        rows = sample_chunked(teacher, teacher_tok, prompts, cfg.mode, cfg.teacher_samples, cfg.teacher_temperature,
                              cfg.teacher_top_p, cfg.max_new_tokens, cfg.batch_size, cfg.seed * 7919 + t,
                              it / "teacher.partial.jsonl", verifier, advance)

    def n_tokens(text: str) -> int:  # shortest in the student's tokens: what it will learn to produce
        return len(student_tok.encode(text, add_special_tokens=False))

    out = []
    for key, task, row in zip(keys, prompts, rows):
        best = shortest_correct(row["responses"], row["correct"], n_tokens)
        out.append({"key": key, "task": task.to_dict(), "responses": row["responses"], "correct": row["correct"],
                    "best": best, "best_tokens": n_tokens(row["responses"][best]) if best is not None else None})
    write_jsonl(it / "teacher.jsonl", out)
    (it / "teacher.partial.jsonl").unlink(missing_ok=True)


def _stage_difficulty(cfg: DistillConfig, t: int, it: Path, usable: list[dict], current: str, student_tok,
                      verifier: Verifier) -> None:
    model, _ = load_any(current)
    tasks = [Task.from_dict(r["task"]) for r in usable]
    with progress_bar(f"student {t}", len(tasks), enabled=cfg.progress) as advance:
        rows = sample_chunked(model, student_tok, tasks, cfg.mode, cfg.student_samples, cfg.student_temperature,
                              None, cfg.max_new_tokens, cfg.batch_size, cfg.seed * 7919 + 1000 + t,
                              it / "difficulty.partial.jsonl", verifier, advance)
    out = [{"key": r["key"], "passes": sum(row["correct"]), "samples": cfg.student_samples,
            "difficulty": difficulty(sum(row["correct"]), cfg.student_samples)} for r, row in zip(usable, rows)]
    write_json(it / "difficulty.json", out)
    (it / "difficulty.partial.jsonl").unlink(missing_ok=True)


def _read_difficulty(it: Path) -> dict[str, float]:
    path = it / "difficulty.json"
    return {r["key"]: r["difficulty"] for r in json.loads(path.read_text())} if path.is_file() else {}


def read_rows(path: Path) -> list[dict]:
    """Records of a JSONL file this run wrote (an empty file is an empty list, unlike `read_jsonl`)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stage_select(cfg: DistillConfig, t: int, it: Path, usable: list[dict]) -> None:
    size, seed = size_at(cfg, t), cfg.seed * 7919 + 2000 + t
    by_key = {r["key"]: r for r in usable}
    diffs = _read_difficulty(it)
    if cfg.selection == "balanced":
        chosen = select_balanced(diffs, size, cfg.mix, seed, cfg.drop_solved, cfg.drop_unsolved)
    elif cfg.selection == "random":
        chosen = select_random(list(by_key), size, seed)
    else:
        chosen = sorted(by_key)
    if not chosen and size:
        # not fatal: the iteration carries the student forward unchanged and the report shows it, so a long
        # run survives one barren slice of the pool
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]iteration {t} selected no prompts[/]: of {len(usable)} prompts with a verified teacher "
            f"response none fits selection={cfg.selection!r} (see {it / 'difficulty.json'}); the student is carried "
            "forward unchanged. If this repeats, raise prompts_per_iteration or teacher_samples, or keep "
            "always/never-solved prompts (drop_solved / drop_unsolved: false).")
    rows, sft = [], []
    for key in chosen:
        r = by_key[key]
        d = diffs.get(key)
        rows.append({"key": key, "task": r["task"], "response": r["responses"][r["best"]], "tokens": r["best_tokens"],
                     "difficulty": d, "bin": bin_of(d) if d is not None else "unknown"})
        sft.append({"id": key, "task": r["task"]["task"], "difficulty": r["task"]["difficulty"], "mode": cfg.mode,
                    "messages": [{"role": "user", "content": r["task"]["prompt"]},
                                 {"role": "assistant", "content": r["responses"][r["best"]]}]})
    write_jsonl(it / "selected.jsonl", rows)
    write_jsonl(it / "sft.jsonl", sft)


def _stage_sft(cfg: DistillConfig, it: Path, current: str) -> None:
    from duomind.config import TrainConfig
    from duomind.train.loop import train

    if not read_rows(it / "sft.jsonl"):
        return  # nothing selected: no fine-tuning, the merge stage carries theta_{t-1} forward
    for seed in cfg.sft_seeds:
        fields = {**cfg.sft, "mode": "sft", "data": str(it / "sft.jsonl"), "init_from": current,
                  "out_dir": str(it / f"sft-{seed}"), "seed": seed, "threads": cfg.threads, "progress": cfg.progress,
                  "keep_last": max(cfg.merge_checkpoints, 1)}
        train(TrainConfig(**fields))


def _stage_merge(cfg: DistillConfig, it: Path, current: str) -> Path:
    from duomind.merge import METHODS, MergeConfig, MergeModel, merge

    runs = [it / f"sft-{seed}" for seed in cfg.sft_seeds]
    if not read_rows(it / "sft.jsonl"):
        return Path(current)
    if not cfg.merge:
        return _last_checkpoints(runs[0], 1)[-1]
    ckpts = [p for run in runs for p in _last_checkpoints(run, cfg.merge_checkpoints)]
    method = METHODS[cfg.merge_method]
    params: dict[str, Any] = {}
    if "lambda" in method.global_params:
        params["lambda"] = cfg.merge_lambda
    if "normalize" in method.global_params:
        params["normalize"] = True  # the mean of the task vectors, as theta_t's formula says
    params.update(cfg.merge_parameters)
    mcfg = MergeConfig(cfg.merge_method, [MergeModel(str(p)) for p in ckpts], base_model=current, parameters=params)
    mcfg.validate(f"distill merge ({cfg.merge_method})")
    return merge(mcfg, it / "student", overwrite=True, progress=cfg.progress)


def _iteration_report(cfg: DistillConfig, t: int, it: Path, student: str, timings: dict) -> dict:
    teacher = read_rows(it / "teacher.jsonl")
    selected = read_rows(it / "selected.jsonl")
    diffs = _read_difficulty(it)
    n_resp = sum(len(r["correct"]) for r in teacher)
    correct_lengths = [len(x) for r in teacher for x, ok in zip(r["responses"], r["correct"]) if ok]
    best_lengths = [len(r["responses"][r["best"]]) for r in teacher if r["best"] is not None]
    loss = None
    metrics = it / f"sft-{cfg.sft_seeds[0]}" / "metrics.jsonl"
    if metrics.is_file():
        losses = [json.loads(x).get("loss") for x in metrics.read_text().splitlines()]
        losses = [x for x in losses if x is not None]
        loss = {"first": losses[0], "last": losses[-1]} if losses else None
    return {
        "iteration": t,
        "student": student,
        "dedup": json.loads((it / "dedup.json").read_text()),
        "teacher": {"prompts": len(teacher), "responses": n_resp,
                    "response_pass_rate": len(correct_lengths) / max(n_resp, 1),
                    "prompts_with_correct": len(best_lengths),
                    "mean_chars_correct": sum(correct_lengths) / max(len(correct_lengths), 1),
                    "mean_chars_shortest": sum(best_lengths) / max(len(best_lengths), 1)},
        "difficulty": {"histogram": {f"{k:.3f}": v for k, v in sorted(Counter(diffs.values()).items())},
                       "by_bin": dict(Counter(bin_of(d) for d in diffs.values()))} if diffs else None,
        "selected": {"n": len(selected), "by_bin": dict(Counter(r["bin"] for r in selected)),
                     "by_task": dict(Counter(r["task"]["task"] for r in selected)),
                     "mean_tokens": sum(r["tokens"] for r in selected) / max(len(selected), 1)},
        "sft_loss": loss,
        "merge": {"method": cfg.merge_method, "lambda": cfg.merge_lambda, "checkpoints": cfg.merge_checkpoints,
                  "runs": len(cfg.sft_seeds)} if cfg.merge and selected else None,
        "trained": bool(selected),
        "eval": json.loads((it / "eval.json").read_text()),
        "seconds": timings,
    }


def _write_run_report(cfg: DistillConfig, out: Path, rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: r["iteration"])
    report = {"accuracy_by_iteration": [r["eval"]["accuracy"] for r in rows],
              "accuracy_by_difficulty": {lvl: [r["eval"]["by_difficulty"].get(lvl) for r in rows]
                                         for lvl in sorted({k for r in rows for k in r["eval"]["by_difficulty"]})},
              "selected_by_iteration": [r["selected"]["n"] for r in rows if r.get("selected")],
              "iterations": rows, "config": to_dict(cfg)}
    write_json(out / "report.json", report)
    if rows:
        plot_report(rows, out / "report.png", f"iterative distillation ({out.name}): selection={cfg.selection}, "
                                              f"merge={cfg.merge_method if cfg.merge else 'off'}")
    return report
