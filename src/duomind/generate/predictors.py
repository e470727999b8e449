"""Trained draft predictors: FIRP's future-state maps and Medusa-style heads; saved beside a checkpoint.

- FIRP (arXiv 2410.20488): k linear maps W_j at layer l turn the layer-l hidden state of the current token
  into pseudo layer-l states of the next k tokens; the base model's own upper layers refine them
  (`speculative.tree_forward`) and its LM head decodes them.
- Medusa (arXiv 2401.10774): k residual heads h + SiLU(W_j h) on the last hidden state, decoded by the
  base model's (frozen, shared) LM head; they never pass through the model's layers.

Both are trained with the base model frozen (`duomind.generate.spec_train`) and saved as
`drafter.safetensors` + `drafter.json` (kind, sizes, and a fingerprint of the base model, so predictors for
another model are refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from duomind.model import DuoMind

KINDS = ("firp", "medusa")


class FIRPPredictor(nn.Module):
    """k linear maps (d x d, initialised to the identity) from h_l(t) to pseudo h_l(t + j), j = 1..k."""

    kind = "firp"

    def __init__(self, hidden_size: int, k: int, layer: int) -> None:
        super().__init__()
        self.k, self.layer = k, layer
        self.maps = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(k))
        with torch.no_grad():
            for m in self.maps:
                m.weight.copy_(torch.eye(hidden_size))
                m.bias.zero_()

    def forward(self, h: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """(..., d) -> (..., k, d), for the first k maps (all by default)."""
        return torch.stack([m(h) for m in self.maps[:k]], dim=-2)


class MedusaHeads(nn.Module):
    """k residual heads h + SiLU(W_j h) (W_j initialised to 0) on the final-norm hidden state."""

    kind = "medusa"

    def __init__(self, hidden_size: int, k: int, layer: int | None = None) -> None:
        super().__init__()
        self.k, self.layer = k, None
        self.heads = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(k))
        with torch.no_grad():
            for m in self.heads:
                m.weight.zero_()
                m.bias.zero_()

    def forward(self, h: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """(..., d) -> (..., k, d), still to be decoded by the base LM head."""
        return torch.stack([h + nn.functional.silu(m(h)) for m in self.heads[:k]], dim=-2)


def fingerprint(model: DuoMind) -> str:
    """A short hash of the base model's config and its embedding, final norm and LM head weights."""
    h = hashlib.sha256(json.dumps(model.config.to_model_config().to_dict(), sort_keys=True).encode())
    for t in (model.embed.weight, model.norm.weight, model.lm_head.weight):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_layer_and_k(model: DuoMind, kind: str, k: int, layer: int | None) -> None:
    """Clear errors for k or l out of range."""
    L = model.config.num_hidden_layers
    if kind not in KINDS:
        raise ValueError(f"unknown predictor kind {kind!r}; use one of {list(KINDS)}.")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft positions) must be an integer >= 1; got {k!r}.")
    if kind == "firp" and (not isinstance(layer, int) or not 1 <= layer <= L - 1):
        raise ValueError(f"FIRP layer l={layer!r} is out of range for a {L}-layer model: pick 1 <= l <= {L - 1} "
                         "(the pseudo states need at least one layer above l).")


def build(model: DuoMind, kind: str, k: int, layer: int | None = None) -> nn.Module:
    check_layer_and_k(model, kind, k, layer)
    d = model.config.hidden_size
    return FIRPPredictor(d, k, layer) if kind == "firp" else MedusaHeads(d, k)


def save_predictors(module: nn.Module, model: DuoMind, out: str | Path, extra: dict | None = None) -> Path:
    """Write drafter.safetensors + drafter.json into `out` atomically (temp dir, fsync, rename)."""
    from duomind.train.checkpoint import seal

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        meta = {"kind": module.kind, "k": module.k, "layer": module.layer,
                "hidden_size": model.config.hidden_size, "num_hidden_layers": model.config.num_hidden_layers,
                "vocab_size": model.config.vocab_size, "base_fingerprint": fingerprint(model), **(extra or {})}
        save_file({n: t.detach().cpu().contiguous() for n, t in module.state_dict().items()},
                  tmp / "drafter.safetensors")
        (tmp / "drafter.json").write_text(json.dumps(meta, indent=1))
        seal(tmp, {"kind": module.kind})
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path: str | Path) -> dict:
    """drafter.json of a predictor directory (kind, k, layer, sizes, fingerprint, measured hit rates)."""
    path = Path(path)
    if not (path / "drafter.json").is_file():
        raise FileNotFoundError(f"no predictors in {str(path)!r} (expected drafter.json + drafter.safetensors); "
                                "train them with `duomind speculate train CKPT OUT`.")
    return json.loads((path / "drafter.json").read_text())


def load_predictors(path: str | Path, model: DuoMind, check_fingerprint: bool = True) -> tuple[nn.Module, dict]:
    """Load predictors saved by `save_predictors` for `model`; refuse ones trained for another model."""
    from duomind.train.checkpoint import verify_checkpoint

    path = Path(path)
    meta = read_meta(path)
    verify_checkpoint(path)
    cfg = model.config
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if meta.get(key) != getattr(cfg, key):
            raise ValueError(f"predictors in {str(path)!r} were trained for a model with {key}={meta.get(key)}, "
                             f"but this model has {key}={getattr(cfg, key)}; train predictors for this model "
                             "with `duomind speculate train`.")
    if check_fingerprint and meta.get("base_fingerprint") != fingerprint(model):
        raise ValueError(f"predictors in {str(path)!r} were trained for another model (fingerprint "
                         f"{meta.get('base_fingerprint')} != {fingerprint(model)}): same shape, different weights. "
                         "Retrain them for this checkpoint with `duomind speculate train`.")
    module = build(model, meta["kind"], meta["k"], meta["layer"])
    state = load_file(path / "drafter.safetensors")
    expected = {n: tuple(t.shape) for n, t in module.state_dict().items()}
    got = {n: tuple(t.shape) for n, t in state.items()}
    if expected != got:
        raise ValueError(f"drafter.safetensors in {str(path)!r} does not match drafter.json "
                         f"(tensor shapes {got} vs {expected}); the directory is corrupt, retrain.")
    module.load_state_dict(state)
    param = next(model.parameters())
    return module.to(device=param.device, dtype=param.dtype).eval(), meta
