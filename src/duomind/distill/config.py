"""`DistillConfig`: one iterative-distillation run (no torch import here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from duomind.config import ConfigError

SELECTIONS = ("balanced", "random", "all")
BINS = ("easy", "medium", "hard")
CHAT_MODES = ("fast", "slow")


@dataclass
class DistillConfig:
    """Iterative distillation with inter-iteration model merging (Pangu Embedded stage 1a, arXiv 2505.22375).

    Attributes:
        out_dir: Run directory (one `iter-N/` per iteration, report.json, report.png); an existing run resumes.
        teacher: Teacher checkpoint: a DuoMind checkpoint or run directory, or a local Hugging Face model of a
            supported architecture (converted on load).
        student: The student's starting checkpoint theta_0 (a DuoMind checkpoint or run directory).
        prompts: Prompt pool: task records JSONL (`tasks.jsonl` from `duomind data make`).
        eval_data: Held-out task records JSONL for evaluation (`heldout.jsonl`); pool prompts that are near
            duplicates of these are removed.
        iterations: Distillation iterations.
        prompts_per_iteration: Fresh pool prompts considered per iteration (before de-duplication).
        mode: Chat mode of the prompts and of the SFT data: "slow" (think, then answer) or "fast".
        teacher_samples: Responses the teacher samples per prompt.
        teacher_temperature: Teacher sampling temperature.
        teacher_top_p: Teacher nucleus mass.
        max_new_tokens: Longest response, teacher and student.
        student_samples: Samples per prompt for the student's pass rate (difficulty = 1 - pass rate).
        student_temperature: Student sampling temperature when estimating difficulty.
        batch_size: Prompts per generation batch.
        dedup_threshold: Jaccard similarity at which two prompts count as near duplicates.
        dedup_ngram: Word n-gram size of the MinHash shingles.
        dedup_num_perm: MinHash permutations.
        selection: "balanced" (difficulty mix, always- and never-solved dropped), "random" (uniform over the
            prompts with a verified teacher response) or "all".
        select_size: Prompts selected per iteration: one number, or a list with one per iteration (0: no training).
        mix: Target shares of the difficulty bins (easy: difficulty <= 1/3, medium, hard: >= 2/3).
        drop_solved: Drop prompts the student always solves (difficulty 0) in balanced selection.
        drop_unsolved: Drop prompts the student never solves (difficulty 1) in balanced selection.
        sft: TrainConfig fields for each iteration's fine-tuning (mode, data, init_from, out_dir are set here).
        sft_seeds: One SFT run per seed (different data order); all their kept checkpoints are merged.
        merge: Merge the iteration's checkpoints into the next iterate; false: the last checkpoint of the first
            seed's run is the next iterate.
        merge_method: Merge method (task_arithmetic, ties, dare_linear, dare_ties, linear, model_stock).
        merge_checkpoints: Checkpoints per SFT run that enter the merge (the last ones saved).
        merge_lambda: Scale of the merged task vector: theta_t = theta_{t-1} + lambda * mean(theta_t^i - theta_{t-1}).
        merge_parameters: Further merge parameters (e.g. density for ties / dare), given to every model.
        eval_limit: Evaluate on at most this many held-out problems (0: all).
        seed: Seed of prompt order, sampling and selection.
        threads: torch intra-op threads (None: torch's default).
        progress: Show progress bars.
    """

    out_dir: str = "runs/distill"
    teacher: str = "runs/teacher"
    student: str = "runs/student"
    prompts: str = "data/tasks.jsonl"
    eval_data: str = "data/heldout.jsonl"
    iterations: int = 3
    prompts_per_iteration: int = 256
    mode: str = "slow"
    teacher_samples: int = 4
    teacher_temperature: float = 0.8
    teacher_top_p: float | None = 0.95
    max_new_tokens: int = 160
    student_samples: int = 4
    student_temperature: float = 0.8
    batch_size: int = 64
    dedup_threshold: float = 0.8
    dedup_ngram: int = 2
    dedup_num_perm: int = 128
    selection: str = "balanced"
    select_size: int | list[int] = 128
    mix: dict[str, float] = field(default_factory=lambda: {"easy": 0.25, "medium": 0.5, "hard": 0.25})
    drop_solved: bool = True
    drop_unsolved: bool = True
    sft: dict[str, Any] = field(default_factory=lambda: {"max_steps": 60, "save_every": 20, "lr": 5e-4,
                                                          "min_lr": 5e-5, "warmup_steps": 5, "seq_len": 256,
                                                          "global_batch_size": 16, "micro_batch_size": 16})
    sft_seeds: list[int] = field(default_factory=lambda: [0])
    merge: bool = True
    merge_method: str = "task_arithmetic"
    merge_checkpoints: int = 3
    merge_lambda: float = 1.0
    merge_parameters: dict[str, Any] = field(default_factory=dict)
    eval_limit: int = 0
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    # No public methods: the CLI (jsonargparse) would turn them into sub-commands of `duomind distill`.
    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Raise `ConfigError` naming the first bad field and the fix."""
        from duomind.config import TrainConfig

        for name in ("iterations", "prompts_per_iteration", "teacher_samples", "max_new_tokens", "student_samples",
                     "batch_size", "dedup_ngram", "dedup_num_perm", "merge_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.mode not in CHAT_MODES:
            raise ConfigError(f"mode={self.mode!r} is not one of {list(CHAT_MODES)}.")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection={self.selection!r} is not one of {list(SELECTIONS)}.")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ConfigError(f"dedup_threshold must lie in (0, 1], got {self.dedup_threshold}.")
        if self.teacher_temperature <= 0 or self.student_temperature <= 0:
            raise ConfigError("teacher_temperature and student_temperature must be positive: sampling needs "
                              "diverse responses (use a small value such as 0.3 for nearly greedy).")
        sizes = self.select_size if isinstance(self.select_size, list) else [self.select_size]
        floor = 0 if isinstance(self.select_size, list) else 1  # a listed 0 skips training in that iteration
        if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < floor for s in sizes):
            raise ConfigError(f"select_size must be a positive integer or a list of non-negative ones, got "
                              f"{self.select_size!r}.")
        if isinstance(self.select_size, list) and len(self.select_size) < self.iterations:
            raise ConfigError(f"select_size lists {len(self.select_size)} sizes for {self.iterations} iterations; "
                              "give one per iteration or a single number.")
        unknown = sorted(set(self.mix) - set(BINS))
        if unknown or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ConfigError(f"mix must give non-negative shares of {list(BINS)} with a positive sum, "
                              f"got {self.mix!r}.")
        reserved = sorted({"mode", "data", "init_from", "out_dir", "tokenizer", "teacher"} & set(self.sft))
        if reserved:
            raise ConfigError(f"sft sets {reserved}, which distillation sets itself per iteration; remove them.")
        try:
            TrainConfig(**{**self.sft, "mode": "sft"})
        except TypeError as err:
            raise ConfigError(f"sft: {err}; fields are those of `duomind train`.") from err
        except ConfigError as err:
            raise ConfigError(f"sft: {err}") from err
        if not self.sft_seeds or len(set(self.sft_seeds)) != len(self.sft_seeds):
            raise ConfigError(f"sft_seeds must be a non-empty list of distinct seeds, got {self.sft_seeds!r}.")
        if self.merge:
            from duomind.merge import METHODS

            if self.merge_method not in METHODS or self.merge_method == "slerp":
                raise ConfigError(f"merge_method={self.merge_method!r} cannot merge an iteration's checkpoints; "
                                  f"use one of {sorted(set(METHODS) - {'slerp'})}.")
            if self.merge_method == "model_stock" and len(self.sft_seeds) * self.merge_checkpoints < 2:
                raise ConfigError("model_stock needs at least 2 checkpoints: raise merge_checkpoints or sft_seeds.")



def size_at(cfg: DistillConfig, iteration: int) -> int:
    """select_size of iteration `iteration` (1-based)."""
    return cfg.select_size[iteration - 1] if isinstance(cfg.select_size, list) else cfg.select_size


def to_dict(cfg: DistillConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# Fields that may change when a run resumes: they do not change what the run computes.
RESUMABLE_CHANGES = {"iterations", "threads", "progress", "select_size", "out_dir"}
