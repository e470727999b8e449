"""Stage 1 of the embedded pipeline (Pangu Embedded, arXiv 2505.22375): what comes before the dual-system stages.

After the dual SFT model exists (`duomind.reasoner.dual`, stages 1-2), the optional steps here turn it into the
Stage-1 reasoner that Stage 2 labels and fuses:

- teacher: a checkpoint (yours, or a local Hugging Face model), or one trained here on the slow chats of the same
  data (a mapping: `model_preset`, `model` overrides, `steps`, `lr`); only needed by distillation;
- distill: iterative distillation with inter-iteration merging (`duomind.distill`, Stage 1a) from the teacher,
  starting at the dual SFT model, prompts from the training split;
- rl: GRPO with MARS rewards under the stale-synchronous scheduler on Ray (`duomind.rl`, Stage 1b), starting at
  the previous model.

Each step keeps its own run directory under the dual run (teacher/, distill/, rl/) and resumes like the rest.
The pipeline fills in the paths that connect the steps; a recipe that sets them itself is refused.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from duomind.config import ConfigError, from_dict

DISTILL_SET = ("out_dir", "teacher", "student", "prompts", "eval_data")  # wired by the pipeline
RL_SET = ("out_dir", "policy", "prompts", "eval_data")
TEACHER_KEYS = ("model_preset", "model", "steps", "lr")


def check(teacher: Any, distill: dict | None, rl: dict | None) -> None:
    """Validate the Stage-1 settings of a DualConfig before any training starts (a typo fails in seconds)."""
    from duomind.distill.config import DistillConfig
    from duomind.rl.config import RLConfig

    for name, section, wired in (("distill", distill, DISTILL_SET), ("rl", rl, RL_SET)):
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{name} must be a mapping of {name} settings (or null to skip the step), got "
                              f"{type(section).__name__}.")
        clash = sorted(set(section) & set(wired))
        if clash:
            raise ConfigError(f"{name}: {', '.join(clash)} connect the pipeline's steps and are set by it; remove "
                              f"them from the recipe (run `duomind {name}` alone to choose them yourself).")
    if distill is not None:
        if teacher is None:
            raise ConfigError("distill needs a teacher: a checkpoint path, or a mapping (model_preset, model, steps, "
                              "lr) to train one on the slow chats of the run's data.")
        from_dict(DistillConfig, {**distill, "progress": False}, "distill")
    if rl is not None:
        from_dict(RLConfig, {**rl, "policy": "(stage 1)", "prompts": "(stage 1)", "progress": False}, "rl")
        if find_spec("ray") is None:  # found now, not after hours of pre-training and distillation
            from duomind.rl.workers import INSTALL_HINT

            raise ConfigError(f"rl: {INSTALL_HINT} (or set `rl: null` to skip the RL step).")
    if isinstance(teacher, dict):
        unknown = sorted(set(teacher) - set(TEACHER_KEYS))
        if unknown:
            raise ConfigError(f"teacher: unknown key(s) {', '.join(unknown)}; a teacher trained here takes "
                              f"{', '.join(TEACHER_KEYS)}.")
        if int(teacher.get("steps", 0)) < 1:
            raise ConfigError("teacher.steps must be at least 1 (training steps of the teacher on slow chats).")
    elif teacher is not None and not isinstance(teacher, str):
        raise ConfigError(f"teacher must be a checkpoint path or a mapping, got {type(teacher).__name__}.")


def run_stage1(cfg, out: Path, data: Path, start: Path, train_tasks: list, train) -> tuple[Path, dict]:
    """Teacher, distillation and RL after the dual SFT model `start`, prompted with `train_tasks` (the training
    split); returns (the model Stage 2 starts from, a record of each step for the report).
    `train(out, data, steps, lr, **start)` runs one SFT (dual._train)."""
    from duomind.train.checkpoint import latest_checkpoint, resolve_checkpoint

    record: dict[str, Any] = {}
    # absolute paths: the distillation run records them and refuses a resume whose paths differ
    out, data, model = out.resolve(), data.resolve(), Path(start).resolve()
    train_split = data / "train_tasks.jsonl"
    if (cfg.distill is not None or cfg.rl is not None) and not train_split.is_file():
        from duomind.tasks import write_jsonl

        write_jsonl(train_split, train_tasks)  # Stage 1 never prompts with a held-out problem
    if cfg.distill is not None:
        teacher = _teacher(cfg, out, data, start, train)
        from duomind.distill.config import DistillConfig
        from duomind.distill.loop import distill

        dcfg = from_dict(DistillConfig, {"threads": cfg.threads, "seed": cfg.seed, **cfg.distill,
                                         "out_dir": str(out / "distill"), "teacher": str(teacher),
                                         "student": str(model), "prompts": str(train_split),
                                         "eval_data": str(data / "heldout.jsonl"), "progress": cfg.progress}, "distill")
        report = distill(dcfg)
        model = resolve_checkpoint(report["iterations"][-1]["student"])
        record["teacher"] = str(teacher)
        record["distill"] = {"model": str(model), "accuracy_by_iteration": report["accuracy_by_iteration"],
                             "selected_by_iteration": report["selected_by_iteration"]}
    if cfg.rl is not None:
        from duomind.rl.config import RLConfig
        from duomind.rl.loop import train_rl

        rl_dir = out / "rl"
        rcfg = from_dict(RLConfig, {"threads": cfg.threads or 1, "seed": cfg.seed, **cfg.rl, "out_dir": str(rl_dir),
                                    "policy": str(model), "prompts": str(train_split),
                                    "eval_data": str(data / "heldout.jsonl"), "progress": cfg.progress}, "rl")
        done = rl_dir / "summary.json"
        summary = json.loads(done.read_text()) if done.is_file() else {}
        source = json.loads((rl_dir / "source.json").read_text()) if (rl_dir / "source.json").is_file() else {}
        if source.get("policy") not in (None, str(model)):
            summary = {}  # started from another model (a changed earlier step): RLRun refuses it with the fix
        if summary.get("steps") != rcfg.max_steps:  # a finished run is not re-entered (it would evaluate again)
            from duomind.rl.workers import require_ray

            ray = require_ray()
            ours = not ray.is_initialized()
            try:
                summary = train_rl(rcfg)
            finally:
                if ours:  # the local Ray instance the run started; Stage 2 does not need it
                    ray.shutdown()
        model = latest_checkpoint(rl_dir)
        record["rl"] = {"model": str(model), "steps": summary["steps"], "staleness": rcfg.staleness,
                        "accuracy_before": (summary.get("accuracy_before") or {}).get("accuracy"),
                        "accuracy_after": (summary.get("accuracy_after") or {}).get("accuracy")}
    return model, record


def _teacher(cfg, out: Path, data: Path, start: Path, train) -> Path:
    """The distillation teacher: the configured checkpoint, or one trained here on the run's slow chats."""
    if isinstance(cfg.teacher, str):
        return Path(cfg.teacher)
    slow = data / "sft_slow.jsonl"
    if not slow.is_file():
        from duomind.train.checkpoint import atomic_write_text

        rows = [line for line in (data / "sft.jsonl").read_text().splitlines() if json.loads(line)["mode"] == "slow"]
        atomic_write_text(slow, "\n".join(rows) + "\n")
    t = cfg.teacher
    return train(out / "teacher", slow, int(t["steps"]), float(t.get("lr", cfg.sft_lr)),
                 tokenizer=str(out / "tokenizer" if (out / "tokenizer").is_dir() else start), model_preset=t.get("model_preset", cfg.model_preset),
                 model=t.get("model") or {})
