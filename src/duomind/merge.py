"""Model merging over safetensors: linear, task arithmetic, TIES, DARE, SLERP, Model Stock.

`duomind merge CONFIG.yaml OUT_DIR` takes a config in the shape mergekit users know::

    merge_method: ties                 # linear | task_arithmetic | ties | dare_linear | dare_ties | slerp | model_stock
    base_model: runs/base              # needed by every method except linear
    models:
      - model: runs/math
        parameters: {weight: 1.0, density: 0.5}
      - model: runs/code
        parameters: {weight: 0.5, density: 0.5}
    parameters: {lambda: 1.0}          # method-wide values; per-model ones override them
    dtype: float32                     # output dtype (default: the base model's)

`slerp` interpolates between `base_model` (t = 0) and the single entry of `models` (t = 1) with
`parameters: {t: 0.5}`. Any numeric parameter may also be a gradient (a list interpolated from the
embeddings through the layers to the head) or a list of `{filter: SUBSTRING, value: ...}` entries, the
first matching a tensor's name winning and an entry without `filter` catching the rest.

The merge streams tensor by tensor: every input file is opened only for the read of one tensor (closing
it unmaps its pages), so peak memory is about one output model plus one set of input tensors, however
many models are merged. The output is a checkpoint directory (config and tokenizer copied from the base
model, or the first model for linear), written to a temp dir, sealed with a `COMPLETE` marker and renamed
into place; it loads with `duomind.train.load_model` and `from_pretrained`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from duomind.config import ConfigError, load_mapping
from duomind.progress import progress_bar


class MergeError(ValueError):
    """Models cannot be merged as configured; the message names the problem and the fix."""


# --------------------------------------------------------------------------------------------------
# The methods on single tensors. Every function takes float32 tensors and returns one.
# --------------------------------------------------------------------------------------------------


def _weighted_sum(deltas: list[torch.Tensor], weights: list[float], normalize: bool,
                  base: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i (d_i - base), divided by sum_i w_i when `normalize`; accumulated in place, so memory stays
    at one extra tensor however many models there are."""
    total = torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas):
        total.add_(d if base is None else d - base, alpha=w)
    if normalize:
        norm = sum(weights)
        if norm == 0:
            raise MergeError("the model weights sum to 0, so they cannot be normalised; change a weight or set "
                             "normalize: false.")
        total.div_(norm)
    return total


def linear(tensors: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average of the models (Wortsman et al., model soups, arXiv 2203.05482).

    Args:
        tensors: The same tensor of each model.
        weights: One weight per model.
        normalize: Divide by the sum of the weights (an average); else a plain weighted sum.
    """
    return _weighted_sum(tensors, weights, normalize)


def task_arithmetic(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], lam: float = 1.0,
                    normalize: bool = False) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., arXiv 2212.04089).

    Steps: task vectors tau_i = theta_i - theta_base; combine sum_i w_i tau_i (divided by sum w_i when
    `normalize`); return theta_base + lam * combined.
    """
    return base + lam * _weighted_sum(tensors, weights, normalize, base)


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude (TIES step 1); zero the rest.

    Entries tied with the smallest kept magnitude are all kept.
    """
    if density >= 1.0:
        return delta
    k = math.ceil(density * delta.numel()) if density > 0 else 0
    if k == 0:
        return torch.zeros_like(delta)
    # numpy's in-place partition finds the k-th largest magnitude with one scratch copy; torch.topk and
    # kthvalue allocate several times the tensor, which would dominate the merge's peak memory
    mags = delta.abs().flatten().numpy()
    cut = mags.size - k
    mags.partition(cut)
    threshold = float(mags[cut])
    del mags
    return delta * (delta.abs() >= threshold)


def ties_combine(deltas: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """TIES steps 2 and 3 on already trimmed task vectors (Yadav et al., arXiv 2306.01708).

    Steps: elect a sign per entry, the sign of the weighted sum of the task vectors; keep, per model, only
    entries that agree with it (disjoint merge); sum them weighted, and with `normalize` divide each entry
    by the weights of the models that contributed to it.
    """
    elected = _weighted_sum(deltas, weights, False).sign_()
    total, denom = torch.zeros_like(deltas[0]), torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas):
        agree = (d.sign() == elected) & (d != 0)
        total.add_(d * agree, alpha=w)
        denom.add_(agree, alpha=w)
    if normalize:
        safe = torch.where(denom != 0, denom, torch.ones_like(denom))  # no contributor: the entry stays 0
        total = torch.where(denom != 0, total / safe, torch.zeros_like(total))
    return total


def ties(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], densities: list[float],
         lam: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., arXiv 2306.01708).

    Steps: task vectors tau_i = theta_i - theta_base; keep the top `density` of each by magnitude;
    elect signs and merge the agreeing entries (`ties_combine`); return theta_base + lam * merged.
    """
    deltas = [trim(t - base, d) for t, d in zip(tensors, densities)]
    return base + lam * ties_combine(deltas, weights, normalize)


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density and rescale the survivors by 1 / density
    (Yu et al., arXiv 2311.03099), so the task vector is unchanged in expectation."""
    if density >= 1.0:
        return delta
    if density <= 0.0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator) < density
    return delta * keep / density


def dare_merge(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], densities: list[float],
               generator: torch.Generator, lam: float = 1.0, normalize: bool = False,
               use_ties: bool = False) -> torch.Tensor:
    """DARE then task arithmetic (`dare_linear`) or TIES sign election (`dare_ties`) (arXiv 2311.03099).

    Steps: task vectors tau_i = theta_i - theta_base; randomly drop and rescale each (`dare`); combine by a
    weighted sum or by TIES sign election; return theta_base + lam * combined.
    """
    deltas = [dare(t - base, d, generator) for t, d in zip(tensors, densities)]
    combined = ties_combine(deltas, weights, normalize) if use_ties else _weighted_sum(deltas, weights, normalize)
    return base + lam * combined


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Spherical linear interpolation from v0 (t = 0) to v1 (t = 1) (Shoemake, SIGGRAPH 1985).

    Steps: the angle between the two tensors seen as flat vectors; weights sin((1-t) a) / sin a and
    sin(t a) / sin a on the unnormalised tensors; plain linear interpolation when they are (anti)parallel
    or one is zero, where the angle is undefined.
    """
    n0, n1 = v0.norm(), v1.norm()
    if n0 < eps or n1 < eps:
        return (1 - t) * v0 + t * v1
    cos = float(torch.clamp((v0.flatten() @ v1.flatten()) / (n0 * n1), -1.0, 1.0))
    if abs(cos) > 1 - 1e-6:
        return (1 - t) * v0 + t * v1
    angle = math.acos(cos)
    s = math.sin(angle)
    return (math.sin((1 - t) * angle) / s) * v0 + (math.sin(t * angle) / s) * v1


def model_stock(base: torch.Tensor, tensors: list[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """Model Stock (Jang et al., arXiv 2403.19522), per tensor.

    Steps: task vectors tau_i = theta_i - theta_base; cos = mean pairwise cosine between them;
    t = N cos / (1 + (N - 1) cos); return t * mean_i(theta_i) + (1 - t) * theta_base. Zero task vectors
    (a model equal to the base) give no angle: the average is returned, which then equals the base.
    """
    n = len(tensors)
    deltas = [(t - base).flatten() for t in tensors]
    avg = sum(tensors) / n
    norms = [d.norm() for d in deltas]
    if n < 2 or any(x < eps for x in norms):
        return avg
    cosines = [float(deltas[i] @ deltas[j] / (norms[i] * norms[j])) for i in range(n) for j in range(i + 1, n)]
    cos = sum(cosines) / len(cosines)
    t = n * cos / (1 + (n - 1) * cos)
    return t * avg + (1 - t) * base


# --------------------------------------------------------------------------------------------------
# The method registry: what each method needs and which parameters it takes.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A merge method: its tensor function and the parameters it accepts (name -> default; None: required)."""

    name: str
    needs_base: bool
    model_params: dict[str, float | None]
    global_params: dict[str, Any]
    min_models: int = 1
    max_models: int | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a merge method; a name may be registered once."""
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is already registered; pick another name.")
    METHODS[method.name] = method
    return method


for _m in (
    Method("linear", False, {"weight": 1.0}, {"normalize": True}),
    Method("task_arithmetic", True, {"weight": 1.0}, {"lambda": 1.0, "normalize": False}),
    Method("ties", True, {"weight": 1.0, "density": 1.0}, {"lambda": 1.0, "normalize": True}),
    Method("dare_linear", True, {"weight": 1.0, "density": 1.0}, {"lambda": 1.0, "normalize": False, "seed": 0}),
    Method("dare_ties", True, {"weight": 1.0, "density": 1.0}, {"lambda": 1.0, "normalize": True, "seed": 0}),
    Method("slerp", True, {}, {"t": None}, min_models=1, max_models=1),
    Method("model_stock", True, {}, {}, min_models=2),
):
    register_method(_m)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SCALAR_ONLY = {"normalize", "seed"}


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class MergeModel:
    """One input model and its parameters."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeConfig:
    """A merge, in mergekit's shape (see the module docstring)."""

    merge_method: str
    models: list[MergeModel]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "merge config") -> MergeConfig:
        """Build and validate a config from a mapping (paths are not touched; `merge` checks them)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping with merge_method and models, got {type(data).__name__}.")
        known = {"merge_method", "models", "base_model", "parameters", "dtype"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; a merge config has {sorted(known)}.")
        if "merge_method" not in data:
            raise ConfigError(f"{where}: no merge_method; set one of {sorted(METHODS)}.")
        raw_models = data.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise ConfigError(f"{where}: `models` must be a non-empty list of entries like `- model: PATH`.")
        models = []
        for i, entry in enumerate(raw_models):
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
                raise ConfigError(f"{where}: models[{i}] must be a mapping with `model: PATH`, got {entry!r}.")
            extra = sorted(set(entry) - {"model", "parameters"})
            if extra:
                raise ConfigError(f"{where}: models[{i}] has unknown key(s) {extra}; use `model` and `parameters`.")
            params = entry.get("parameters") or {}
            if not isinstance(params, dict):
                raise ConfigError(f"{where}: models[{i}].parameters must be a mapping, got {params!r}.")
            models.append(MergeModel(entry["model"], dict(params)))
        base = data.get("base_model")
        if isinstance(base, dict):  # mergekit also accepts {model: PATH}
            base = base.get("model")
        cfg = cls(str(data["merge_method"]), models, base, dict(data.get("parameters") or {}), data.get("dtype"))
        cfg.validate(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        out["models"] = [{"model": m.model, **({"parameters": m.parameters} if m.parameters else {})}
                         for m in self.models]
        if self.parameters:
            out["parameters"] = self.parameters
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    def validate(self, where: str = "merge config") -> None:
        """Raise `ConfigError` naming the first problem: unknown method or parameter, missing base, bad value."""
        if self.merge_method not in METHODS:
            raise ConfigError(f"{where}: unknown merge_method {self.merge_method!r}; known: {sorted(METHODS)}.")
        m = METHODS[self.merge_method]
        if m.needs_base and not self.base_model:
            raise ConfigError(f"{where}: merge_method {m.name!r} needs base_model: PATH (the model the task vectors "
                              "are measured from, e.g. the common ancestor of the models).")
        n = len(self.models)
        if n < m.min_models or (m.max_models is not None and n > m.max_models):
            want = f"exactly {m.max_models}" if m.max_models == m.min_models else f"at least {m.min_models}"
            hint = " (slerp interpolates from base_model to that one model)" if m.name == "slerp" else ""
            raise ConfigError(f"{where}: {m.name!r} takes {want} entr{'y' if want.endswith(' 1') else 'ies'} in "
                              f"models, got {n}{hint}.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"{where}: dtype {self.dtype!r} is not one of {sorted(DTYPES)}.")
        allowed_global = set(m.global_params) | set(m.model_params)
        for name, value in self.parameters.items():
            if name not in allowed_global:
                raise ConfigError(f"{where}: parameter {name!r} does not apply to {m.name!r}; it takes "
                                  f"{sorted(allowed_global) or 'no parameters'}.")
            _check_value(name, value, f"{where}: parameters.{name}")
        for i, mm in enumerate(self.models):
            for name, value in mm.parameters.items():
                if name not in m.model_params:
                    raise ConfigError(f"{where}: models[{i}].parameters.{name} does not apply to {m.name!r}; per-model "
                                      f"parameters are {sorted(m.model_params) or 'none'}.")
                _check_value(name, value, f"{where}: models[{i}].parameters.{name}")
        for name, default in m.global_params.items():
            if default is None and name not in self.parameters:
                raise ConfigError(f"{where}: {m.name!r} needs parameters: {{{name}: ...}}.")


def _check_value(name: str, value: Any, where: str) -> None:
    if name in _SCALAR_ONLY:
        ok = isinstance(value, bool) if name == "normalize" else isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{where} must be a {'boolean' if name == 'normalize' else 'integer'}, got {value!r}.")
        return
    for number in _numbers(value, where):
        if name in ("density", "t") and not 0.0 <= number <= 1.0:
            raise ConfigError(f"{where} must lie in [0, 1], got {number}.")


def _numbers(value: Any, where: str) -> list[float]:
    """Every number inside a parameter value (scalar, gradient list or filter list), validating its shape."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in value):
        return [float(v) for v in value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for entry in value:
            if "value" not in entry or set(entry) - {"filter", "value"}:
                raise ConfigError(f"{where}: each filter entry needs `value` (and optionally `filter`), got {entry!r}.")
            out += _numbers(entry["value"], where)
        return out
    raise ConfigError(f"{where} must be a number, a list of numbers (a gradient over layers) or a list of "
                      f"{{filter, value}} entries, got {value!r}.")


def load_config(path: str | Path) -> MergeConfig:
    """Read and validate a merge config YAML/JSON file."""
    return MergeConfig.from_dict(load_mapping(path), str(path))


# --------------------------------------------------------------------------------------------------
# Inputs: tensor names, shapes and files of each model, read one tensor at a time.
# --------------------------------------------------------------------------------------------------

_NOT_WEIGHTS = {"optimizer.safetensors", "rng.safetensors"}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class Source:
    """One model directory: which file holds each tensor; reads one tensor per open (see module docstring)."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        from duomind.train.checkpoint import CheckpointError, resolve_checkpoint, verify_checkpoint

        try:
            self.path = resolve_checkpoint(path)
            if (self.path / "COMPLETE").exists():
                verify_checkpoint(self.path)
        except CheckpointError as err:
            raise MergeError(f"model {str(path)!r}: {err}") from err
        files = sorted(f for f in self.path.glob("*.safetensors") if f.name not in _NOT_WEIGHTS)
        if not files:
            raise MergeError(f"model {str(path)!r} has no *.safetensors weights; convert or re-save it as safetensors.")
        self.files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    self.files[name] = f
                    self.shapes[name] = tuple(sl.get_shape())
                    self.dtypes[name] = sl.get_dtype()

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as fh:
            return fh.get_tensor(name)

    def vocab(self) -> dict[str, int] | None:
        """The tokenizer's vocabulary, if the directory has a tokenizer.json."""
        tok = self.path / "tokenizer.json"
        if not tok.is_file():
            return None
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok)).get_vocab(with_added_tokens=True)


def check_compatible(sources: dict[str, Source]) -> list[str]:
    """Every model must hold the same tensors with the same shapes and the same vocabulary; returns the names."""
    (ref_key, ref), *rest = sources.items()
    for key, src in rest:
        missing, extra = sorted(set(ref.shapes) - set(src.shapes)), sorted(set(src.shapes) - set(ref.shapes))
        if missing or extra:
            raise MergeError(f"{key!r} and {ref_key!r} hold different tensors (only in {ref_key!r}: {missing[:4]}; "
                             f"only in {key!r}: {extra[:4]}); merge only models of one architecture and config "
                             "(tied vs untied embeddings count too).")
        for name, shape in ref.shapes.items():
            if src.shapes[name] != shape:
                other = src.shapes[name]
                if ("embed" in name or "lm_head" in name) and other[0] != shape[0] and other[1:] == shape[1:]:
                    raise MergeError(f"vocabulary mismatch: {name!r} is {list(shape)} in {ref_key!r} but "
                                     f"{list(src.shapes[name])} in {key!r}; merge only models that share one tokenizer.")
                raise MergeError(f"shape mismatch: tensor {name!r} is {list(shape)} in {ref_key!r} but "
                                 f"{list(src.shapes[name])} in {key!r}; merge only models of the same size.")
    vocabs = {k: s.vocab() for k, s in sources.items()}
    known = {k: v for k, v in vocabs.items() if v is not None}
    if known:
        (k0, v0), *others = known.items()
        for k, v in others:
            if v != v0:
                diff = sorted(set(v0.items()) ^ set(v.items()))[:3]
                raise MergeError(f"vocabulary mismatch: the tokenizers of {k0!r} and {k!r} differ (e.g. {diff}); "
                                 "merge only models that share one tokenizer.")
    return list(ref.shapes)


# --------------------------------------------------------------------------------------------------
# Parameter resolution per tensor
# --------------------------------------------------------------------------------------------------


def layer_position(name: str, num_layers: int) -> float:
    """Where a tensor sits in depth, from 0 (embeddings and first layer) to 1 (last layer, final norm, head)."""
    m = _LAYER.search(name)
    if m:
        return int(m.group(1)) / max(num_layers - 1, 1)
    return 0.0 if "embed" in name else 1.0


def resolve(value: Any, name: str, num_layers: int) -> float:
    """A parameter's value for one tensor: a scalar, a gradient over depth, or the first matching filter."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for entry in value:
            if "filter" not in entry or entry["filter"] in name:
                return resolve(entry["value"], name, num_layers)
        raise MergeError(f"no filter entry matches tensor {name!r}; add a final entry without `filter` as the default.")
    if isinstance(value, list):
        if len(value) == 1:
            return float(value[0])
        x = layer_position(name, num_layers) * (len(value) - 1)
        lo = min(int(math.floor(x)), len(value) - 2)
        frac = x - lo
        return float(value[lo]) * (1 - frac) + float(value[lo + 1]) * frac
    return float(value)


def _seed_for(seed: int, name: str, index: int) -> int:
    # crc32, not hash(): the same tensor gets the same DARE mask in every process and run
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2**63)


def merge_tensor(cfg: MergeConfig, name: str, base: torch.Tensor | None, tensors: list[torch.Tensor],
                 num_layers: int) -> torch.Tensor:
    """Merge one tensor (float32 in, float32 out) as `cfg` says."""
    m = METHODS[cfg.merge_method]

    def model_param(i: int, key: str) -> float:
        value = cfg.models[i].parameters.get(key, cfg.parameters.get(key, m.model_params[key]))
        return resolve(value, name, num_layers)

    def global_param(key: str) -> Any:
        value = cfg.parameters.get(key, m.global_params[key])
        return value if key in _SCALAR_ONLY else resolve(value, name, num_layers)

    n = len(tensors)
    weights = [model_param(i, "weight") for i in range(n)] if "weight" in m.model_params else []
    densities = [model_param(i, "density") for i in range(n)] if "density" in m.model_params else []
    if m.name == "linear":
        return linear(tensors, weights, global_param("normalize"))
    if m.name == "task_arithmetic":
        return task_arithmetic(base, tensors, weights, global_param("lambda"), global_param("normalize"))
    if m.name == "ties":
        return ties(base, tensors, weights, densities, global_param("lambda"), global_param("normalize"))
    if m.name in ("dare_linear", "dare_ties"):
        gen = torch.Generator().manual_seed(_seed_for(global_param("seed"), name, 0))
        return dare_merge(base, tensors, weights, densities, gen, global_param("lambda"), global_param("normalize"),
                          use_ties=m.name == "dare_ties")
    if m.name == "slerp":
        return slerp(global_param("t"), base, tensors[0])
    if m.name == "model_stock":
        return model_stock(base, tensors)
    raise MergeError(f"merge method {m.name!r} is registered but merge_tensor has no branch for it.")


# --------------------------------------------------------------------------------------------------
# The merge
# --------------------------------------------------------------------------------------------------

_SKIP_COPY = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|gguf)$|.*\.safetensors\.index\.json$|"
                        r"^(trainer_state\.json|COMPLETE|merge_config\.yaml|latest|metrics\.jsonl|loss\.png)$")


def merge(cfg: MergeConfig, out_dir: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Merge the models of `cfg` into a new checkpoint directory `out_dir`; returns its path.

    Raises:
        MergeError: A model is missing or incomplete, the models differ in tensors, shapes or vocabulary,
            or `out_dir` is taken (pass overwrite=True to replace it once the new merge is complete).
    """
    from duomind.train.checkpoint import seal

    cfg.validate()
    out = Path(out_dir)
    keys = ([cfg.base_model] if cfg.base_model else []) + [m.model for m in cfg.models]
    sources: dict[str, Source] = {}
    for key in keys:
        if key not in sources:
            sources[key] = Source(key)
    inputs = {p.path.resolve() for p in sources.values()}
    if out.resolve() in inputs or any(out.resolve() in p.parents for p in inputs):
        raise MergeError(f"out_dir {str(out)!r} is one of the input models; write the merge somewhere else.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MergeError(f"out_dir {str(out)!r} exists and is not empty; choose a new directory or pass "
                         "--overwrite true (the old one is replaced only after the new merge is complete).")
    names = check_compatible(sources)
    num_layers = 1 + max((int(m.group(1)) for n in names if (m := _LAYER.search(n))), default=0)
    base_src = sources[cfg.base_model] if cfg.base_model else sources[cfg.models[0].model]
    model_srcs = [sources[m.model] for m in cfg.models]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        merged: dict[str, torch.Tensor] = {}
        with progress_bar("merge", len(names), enabled=progress, unit="tensor") as advance:
            for name in names:
                ref = base_src.get(name)
                dtype = DTYPES[cfg.dtype] if cfg.dtype else ref.dtype
                base = ref.float() if cfg.base_model else None
                del ref
                tensors = [s.get(name) for s in model_srcs]
                if not tensors[0].is_floating_point():  # integer buffers: all equal, copied as they are
                    for s, t in zip(model_srcs, tensors):
                        if not torch.equal(t, tensors[0]):
                            raise MergeError(f"non-float tensor {name!r} differs between models ({s.path}); such "
                                             "tensors cannot be merged.")
                    merged[name] = tensors[0].contiguous()
                else:
                    f32 = [t.float() for t in tensors]
                    del tensors
                    result = merge_tensor(cfg, name, base, f32, num_layers)
                    merged[name] = result.to(dtype).contiguous()
                    del f32, result, base
                advance(1)
        _write_output(tmp, merged, base_src.path, cfg)
        del merged
        seal(tmp, {"merge_method": cfg.merge_method})
        if out.exists():
            old = out.with_name(f".old-{out.name}-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_output(tmp: Path, merged: dict[str, torch.Tensor], template: Path, cfg: MergeConfig) -> None:
    from safetensors.torch import save_file

    save_file(merged, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for f in sorted(template.iterdir()):
        if f.is_file() and not _SKIP_COPY.match(f.name):
            shutil.copy2(f, tmp / f.name)
    config = tmp / "config.json"
    if config.is_file() and cfg.dtype:
        data = json.loads(config.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in data:
                data[key] = cfg.dtype
        config.write_text(json.dumps(data, indent=2))
    (tmp / "merge_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def merge_cli(merge_config: str, out_dir: str, overwrite: bool = False, progress: bool = True) -> None:
    """Merge models (linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, model_stock) from a YAML config.

    Args:
        merge_config: Merge config YAML in mergekit's shape (merge_method, base_model, models with parameters,
            dtype); named so because `--config` is the flag every verb takes for its own options.
        out_dir: Output checkpoint directory; must be new or empty unless --overwrite.
        overwrite: Replace an existing out_dir (only after the new merge is complete).
        progress: Show a progress bar.
    """
    path = merge(load_config(merge_config), out_dir, overwrite=overwrite, progress=progress)
    print(f"merged checkpoint: {path}")
