"""Structured pruning with weight re-initialisation (Pangu Light, arXiv 2505.20155) and its baselines.

    from duomind.prune import Targets, prune, recover
    prune("runs/base", "runs/half", method="pangu-light", targets=Targets(target_params=0.5))
    recover("runs/half", "runs/half-kd", data="data/corpus.txt", steps=200)

Modules: `plan` (target shapes, parameter counts), `calibration` (token windows), `importance` (activation
scores), `select` (kept units, CLAP's head moves), `ops` (slicing, SLNP), `reinit` (post-norm absorption),
`pipeline` (methods, checkpoints, KD recovery), `cli`. See docs/pruning.md.
"""

from __future__ import annotations

from duomind import lazy_exports

_LAZY = {
    "Targets": "duomind.prune.plan",
    "solve": "duomind.prune.plan",
    "format_plan": "duomind.prune.plan",
    "param_parts": "duomind.prune.plan",
    "calibration_batches": "duomind.prune.calibration",
    "measure": "duomind.prune.importance",
    "Importance": "duomind.prune.importance",
    "choose": "duomind.prune.select",
    "keep_all": "duomind.prune.select",
    "Selection": "duomind.prune.select",
    "apply": "duomind.prune.ops",
    "slnp": "duomind.prune.ops",
    "absorb_post_norms": "duomind.prune.reinit",
    "METHODS": "duomind.prune.pipeline",
    "plan": "duomind.prune.pipeline",
    "prune_model": "duomind.prune.pipeline",
    "prune": "duomind.prune.pipeline",
    "recover": "duomind.prune.pipeline",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
