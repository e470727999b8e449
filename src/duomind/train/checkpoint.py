"""Checkpoints: safetensors only, written atomically, with a completeness marker.

Layout of a run directory::

    out_dir/step-000200/   config.json, model.safetensors, generation_config.json, tokenizer files,
                           optimizer.safetensors, trainer_state.json, COMPLETE
    out_dir/latest         name of the newest complete checkpoint

A checkpoint is written into a hidden temp directory, every file fsynced, COMPLETE written last (with file
sizes), then renamed into place; `latest` is replaced atomically afterwards. A crash at any point leaves the
previous checkpoint and `latest` intact. Each step directory loads with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt; the message says which and what to do."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (temp file in the same dir, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's state into named tensors (safetensors) plus JSON hyperparameters."""
    tensors, meta = {}, {"param_groups": []}
    for group in opt.param_groups:
        meta["param_groups"].append({k: v for k, v in group.items() if k != "params"} |
                                    {"params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"{names[id(p)]}::{key}"] = t.detach().cpu().contiguous()
    return tensors, meta


def load_optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor],
                           meta: dict) -> None:
    by_name = {names[id(p)]: p for g in opt.param_groups for p in g["params"]}
    for group, saved in zip(opt.param_groups, meta["param_groups"]):
        for key, value in saved.items():
            if key != "params":
                group[key] = tuple(value) if isinstance(value, list) else value
    for flat, t in tensors.items():
        pname, key = flat.split("::")
        if pname not in by_name:
            raise CheckpointError(f"optimizer state names parameter {pname!r}, which the model does not have; "
                                  "the checkpoint belongs to a different model shape.")
        p = by_name[pname]
        opt.state[p][key] = t.to(p.device) if key != "step" else t.clone()


def seal(directory: Path, info: dict[str, Any]) -> None:
    """fsync every file of `directory`, then write the completeness marker (`info` plus file sizes) last.

    Any directory sealed this way passes `verify_checkpoint`; a crash before the marker leaves it "incomplete".
    """
    directory = Path(directory)
    sizes = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.name != MARKER:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            sizes[f.name] = f.stat().st_size
    marker = directory / MARKER
    marker.write_text(json.dumps({**info, "files": sizes}))
    with open(marker, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(out_dir: Path, step: int, model, tokenizer, opt: torch.optim.Optimizer | None,
                    state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write step-XXXXXX atomically and point `latest` at it; prune older complete checkpoints."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".tmp-{final.name}-"))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one on screen
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if opt is not None:
            names = {id(p): n for n, p in model.named_parameters()}
            tensors, meta = optimizer_tensors(opt, names)
            save_file(tensors, tmp / "optimizer.safetensors")
            state = {**state, "optimizer": meta}
        rng = {"torch_rng": torch.get_rng_state()}
        save_file(rng, tmp / "rng.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        seal(tmp, {"step": step})
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(out_dir / "latest", final.name)
    for old in sorted(out_dir.glob("step-*"))[:-keep_last]:
        if old != final and (old / MARKER).exists():
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | Path) -> dict:
    """Check the completeness marker and file sizes; return the marker's content."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete (no {MARKER} marker): it was interrupted "
                              "while being written. Use an earlier checkpoint or the run's `latest`.")
    info = json.loads(marker.read_text())
    for name, size in info["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            got = f.stat().st_size if f.is_file() else "missing"
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {name} should be {size} bytes, found {got}. "
                                  "Use an earlier checkpoint.")
    return info


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None for a fresh run."""
    out_dir = Path(out_dir)
    pointer = out_dir / "latest"
    if not pointer.is_file():
        return None
    path = out_dir / pointer.read_text().strip()
    verify_checkpoint(path)
    return path


def load_training_state(path: Path, model, opt: torch.optim.Optimizer | None) -> dict:
    """Restore model weights, optimizer state and RNG from a complete checkpoint; return trainer_state."""
    verify_checkpoint(path)
    load_weights_into(model, path)
    state = json.loads((path / "trainer_state.json").read_text())
    if opt is not None and (path / "optimizer.safetensors").is_file():
        names = {id(p): n for n, p in model.named_parameters()}
        load_optimizer_tensors(opt, names, load_file(path / "optimizer.safetensors"), state["optimizer"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch_rng"])
    return state


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    files = [f for f in files if f.name not in ("optimizer.safetensors", "rng.safetensors")]
    if not files:
        pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
        hint = " Pickle weights are not loaded; re-save them as safetensors." if pickles else ""
        raise CheckpointError(f"no model weights (*.safetensors) in {str(path)!r}.{hint}")
    return files


def check_shapes(model, path: Path) -> None:
    """Compare every tensor in the checkpoint with the model built from its config; name any mismatch."""
    from safetensors import safe_open

    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    seen = set()
    for f in _weight_files(path):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                shape = tuple(fh.get_slice(name).get_shape())
                if name not in expected:
                    raise CheckpointError(f"{f.name} holds tensor {name!r}, which a model with this config.json "
                                          "does not have; the config and weights belong to different models.")
                if shape != expected[name]:
                    raise CheckpointError(f"tensor {name!r} in {f.name} has shape {list(shape)} but config.json "
                                          f"implies {list(expected[name])}; fix config.json or the weights.")
                seen.add(name)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(expected) - seen - tied)
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks tensors {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}; it is incomplete or for another config.")


def load_weights_into(model, path: Path) -> None:
    """Load a checkpoint's weights into an existing model, with named errors for any mismatch."""
    path = Path(path)
    check_shapes(model, path)
    state = {}
    for f in _weight_files(path):
        state.update(load_file(f))
    model.load_state_dict(state, strict=False)
    if model.config.tie_word_embeddings:
        model.tie_weights()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory standing for its latest complete checkpoint."""
    path = Path(path)
    if not (path / "config.json").is_file():
        if (path / "latest").is_file():
            return latest_checkpoint(path)
        raise CheckpointError(f"{str(path)!r} is not a checkpoint directory (no config.json) nor a run directory "
                              "(no `latest` pointer); pass a run's directory, one of its step-XXXXXX checkpoints, or a "
                              "converted model directory.")
    return path


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a DuoMind checkpoint (or a run's latest one), verified and shape-checked, in eval mode."""
    from duomind.model import DuoMind, DuoMindConfig

    path = resolve_checkpoint(path)
    if (path / MARKER).exists() or (path / "trainer_state.json").exists():
        verify_checkpoint(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != "duomind":
        raise CheckpointError(f"{str(path)!r} holds a {model_type!r} model, not a DuoMind one; convert it first "
                              "with `duomind convert SRC DST`.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = DuoMindConfig.from_pretrained(str(path))
    with torch.device("meta"):
        skeleton = DuoMind(config)
    check_shapes(skeleton, path)
    model = DuoMind.from_pretrained(str(path), dtype=dtype or torch.float32)
    return model.to(device).eval()
