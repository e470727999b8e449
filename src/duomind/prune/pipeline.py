"""Pruning methods end to end: plan, importance, selection, slicing, re-initialisation, checkpoint, recovery.

    pangu-light     joint width + depth, CLAP + SLNP (+ post-norm absorption on sandwich / DSSN models)
                    (Pangu Light, arXiv 2505.20155)
    minitron        the same importance and shape, plain slicing, no re-initialisation (arXiv 2407.14679)
    minitron+clap   minitron with CLAP only
    minitron+slnp   minitron with SLNP only
    shortgpt        depth only: drop the layers of lowest block influence (arXiv 2403.03853)

Recovery (`recover`) is knowledge distillation from the unpruned model through the trainer (mode "kd").
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from duomind.prune.plan import Targets, format_plan, param_parts, solve


@dataclass(frozen=True)
class Method:
    """Defaults of one pruning method; `depth_only` methods prune layers only."""

    clap: bool
    slnp: bool
    absorb: bool
    layer_metric: str
    depth_only: bool = False


METHODS: dict[str, Method] = {
    "pangu-light": Method(clap=True, slnp=True, absorb=True, layer_metric="loss"),
    "minitron": Method(clap=False, slnp=False, absorb=False, layer_metric="loss"),
    "minitron+clap": Method(clap=True, slnp=False, absorb=False, layer_metric="loss"),
    "minitron+slnp": Method(clap=False, slnp=True, absorb=False, layer_metric="loss"),
    "shortgpt": Method(clap=False, slnp=False, absorb=False, layer_metric="bi", depth_only=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {sorted(METHODS)}.")
    return METHODS[name]


def plan(cfg, method: str, targets: Targets):
    """The pruned config of `cfg` under `method` and `targets` (shapes only, no weights read)."""
    m = get_method(method)
    if m.depth_only:
        wide = [k for k in ("hidden", "ffn", "heads", "kv_heads", "experts", "expert_ffn") if getattr(targets, k)]
        if wide:
            raise ValueError(f"method shortgpt prunes layers only; drop --{', --'.join(wide)} or use pangu-light / "
                             "minitron for width.")
        targets = Targets(layers=targets.layers, target_params=targets.target_params, depth_only=True)
    if targets.target_params is None and not any(
            getattr(targets, k) is not None for k in ("hidden", "ffn", "heads", "kv_heads", "layers", "experts",
                                              "expert_ffn")):
        raise ValueError("no target given: pass --target_params (e.g. 0.5) or explicit sizes (--hidden, --ffn, "
                         "--heads, --kv_heads, --layers).")
    return solve(cfg, targets)


@torch.no_grad()
def prune_model(model, method: str, new_cfg, batches: torch.Tensor, clap: bool | None = None,
                slnp: bool | None = None, absorb: bool | None = None, layer_metric: str | None = None,
                importance=None, progress: bool = False):
    """Prune a DuoMind `model` to config `new_cfg` (from `plan`) with `method`; returns (model, info).

    Args:
        model: The model to prune (left unchanged).
        method: A name in `METHODS`.
        new_cfg: Target shape.
        batches: (N, T) calibration token ids.
        clap, slnp, absorb, layer_metric: Override the method's defaults (None keeps them). `absorb` only
            applies to sandwich / DSSN models.
        importance: Reuse scores from `importance.measure` (same model and data) instead of measuring.
        progress: Show a progress bar.
    """
    from duomind.prune.importance import measure
    from duomind.prune.ops import apply
    from duomind.prune.reinit import absorb_post_norms, norm_constants
    from duomind.prune.select import choose

    m = get_method(method)
    clap = m.clap if clap is None else clap
    slnp = m.slnp if slnp is None else slnp
    absorb = m.absorb if absorb is None else absorb
    metric = layer_metric or m.layer_metric
    cfg = model.model_config
    if absorb and cfg.norm_style == "pre":
        absorb = False  # nothing to absorb: a pre-norm model has no post-norms
    if importance is None:
        importance = measure(model, batches, loss_delta=metric == "loss", progress=progress)
    sel = choose(cfg, new_cfg, importance, layer_metric=metric, clap=clap)
    pruned = apply(model, sel, new_cfg, use_slnp=slnp)
    constants = None
    if absorb:
        constants = norm_constants(pruned, batches)
        pruned = absorb_post_norms(pruned, constants=constants)
    info = {"method": method, "clap": clap, "slnp": slnp, "absorb": absorb, "layer_metric": metric,
            "kept_layers": sel.layers, "clap_moved": {str(k): [[g.source, g.group, g.queries] for g in v]
                                                      for k, v in sel.moved_heads().items()},
            "calibration_loss": importance.base_loss, "calibration_tokens": importance.tokens,
            "parameters_before": param_parts(cfg), "parameters_after": param_parts(pruned.model_config),
            "absorption_constants": constants}
    return pruned, info


def prune(src: str | Path, dst: str | Path, method: str = "pangu-light", targets: Targets | None = None,
          calibration: str | Path | None = None, calibration_samples: int = 32, calibration_seq_len: int = 256,
          clap: bool | None = None, slnp: bool | None = None, absorb: bool | None = None,
          layer_metric: str | None = None, overwrite: bool = False, progress: bool = True, echo=print) -> Path:
    """Prune checkpoint `src` into `dst` (written atomically; reloads with `from_pretrained`).

    The plan is printed before any work. `dst` gets the model, the tokenizer files, `prune.json` (method, plan,
    kept units, the source path for recovery) and, if `src` came from Hugging Face, its source record, so
    `duomind convert dst HF_DIR` exports back to the same format where it can express the pruned model.
    """
    from duomind.convert import SOURCE_RECORD, TOKENIZER_FILES
    from duomind.prune.calibration import calibration_batches
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model, resolve_checkpoint, seal

    src_dir = resolve_checkpoint(src)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ValueError(f"{dst} exists and is not empty; choose another destination or pass --overwrite true.")
    model = load_model(src_dir)
    new_cfg = plan(model.model_config, method, targets or Targets())
    echo(format_plan(model.model_config, new_cfg, method))
    if not (src_dir / "tokenizer.json").is_file() and calibration is None:
        raise ValueError(f"{src_dir} has no tokenizer.json, which calibration needs; add one to the checkpoint.")
    batches = calibration_batches(load_tokenizer(src_dir), calibration, calibration_samples, calibration_seq_len)
    pruned, info = prune_model(model, method, new_cfg, batches, clap, slnp, absorb, layer_metric, progress=progress)
    info |= {"source": str(src_dir.resolve()), "targets": asdict(targets or Targets()),
             "calibration": str(calibration) if calibration else "synthetic task corpus"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".tmp-{dst.name}-"))
    try:
        pruned.save_pretrained(tmp, safe_serialization=True)
        for name in (*TOKENIZER_FILES, SOURCE_RECORD):
            if (src_dir / name).is_file() and not (tmp / name).exists():
                shutil.copy2(src_dir / name, tmp / name)
        (tmp / "prune.json").write_text(json.dumps(info, indent=1))
        seal(tmp, {"pruned_from": str(src_dir)})
        if dst.exists():
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    after = info["parameters_after"]["total"] / info["parameters_before"]["total"]
    echo(f"pruned ({method}) model written to {dst}: {info['parameters_after']['total']:,} parameters "
         f"({after:.1%} of the original)")
    return dst


def recover(pruned: str | Path, out_dir: str | Path, data: str | Path, teacher: str | Path | None = None,
            steps: int = 100, **train_fields):
    """KD recovery: train `pruned` towards its unpruned `teacher` (default: the source in prune.json).

    Runs the trainer in mode "kd" with `init_from=pruned`; `data` is plain text (KL on every token) or chats.
    Extra TrainConfig fields (lr, seq_len, global_batch_size, ...) pass through. Returns the final checkpoint.
    """
    from duomind.config import TrainConfig
    from duomind.train.checkpoint import resolve_checkpoint
    from duomind.train.loop import train

    pruned = resolve_checkpoint(pruned)
    if teacher is None:
        record = pruned / "prune.json"
        if not record.is_file():
            raise ValueError(f"{pruned} has no prune.json naming its unpruned source; pass --teacher explicitly.")
        teacher = json.loads(record.read_text())["source"]
    fields = dict(out_dir=str(out_dir), mode="kd", data=str(data), init_from=str(pruned), teacher=str(teacher),
                  max_steps=steps, warmup_steps=min(10, max(steps // 10, 1)), save_every=max(steps, 1))
    return train(TrainConfig(**(fields | train_fields)))
