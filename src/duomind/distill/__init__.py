"""Iterative distillation with inter-iteration model merging (Pangu Embedded stage 1a, arXiv 2505.22375).

    from duomind.distill import DistillConfig, distill
    report = distill(DistillConfig(teacher="runs/teacher", student="runs/student", prompts="data/tasks.jsonl",
                                   eval_data="data/heldout.jsonl", out_dir="runs/distill"))

Modules: `config` (DistillConfig), `dedup` (MinHash-LSH), `select` (shortest correct response,
difficulty, balanced selection), `loop` (the iteration and its resume), `cli`. See docs/distillation.md.
"""

from __future__ import annotations

from duomind import lazy_exports

_LAZY = {
    "DistillConfig": "duomind.distill.config",
    "distill": "duomind.distill.loop",
    "MinHashLSH": "duomind.distill.dedup",
    "dedup": "duomind.distill.dedup",
    "select_balanced": "duomind.distill.select",
    "select_random": "duomind.distill.select",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
