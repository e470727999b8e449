"""Configuration search: enumerate model shapes and parallel plans, keep what fits, report the Pareto front.

The Pangu Ultra MoE / Pro MoE teams chose layers, width, experts and top-k by simulating candidates on
the target cluster instead of training them (arXiv 2505.04519 sec. 2, arXiv 2505.21411 sec. 4). Steps:

  1. model candidates: the cartesian product of `vary` over a base architecture; shapes that are
     inconsistent (e.g. top_k > num_experts) or break the parameter constraints are dropped;
  2. plan candidates per model: the product of the parallel degrees and run options in `degrees`, with
     dp filling the device count (train) or replicas filling it (infer);
  3. cheap checks (`Plan.problems`) reject impossible plans before any timing; the rest are simulated,
     memory overflows included as rejections;
  4. each model keeps its fastest feasible plan; the front holds the models that no other model beats on
     both throughput and size (the quality proxy: total or active parameters).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from duomind.sim.arch import Arch, ArchError, load_arch
from duomind.sim.hardware import Hardware, get_hardware
from duomind.sim.plan import Plan, PlanError, load_plan
from duomind.sim.simulate import Result, simulate

DEFAULT_DEGREES: dict[str, list[Any]] = {"tp": [1, 2, 4, 8], "pp": [1, 2, 4, 8, 16], "ep": [1, 2, 4, 8, 16],
                                         "micro_batch": [1, 2], "recompute": ["selective", "full"]}
SEARCHABLE = ("tp", "pp", "vpp", "ep", "cp", "zero", "micro_batch", "recompute", "batch", "sequence_parallel")


@dataclass
class Candidate:
    """One model with its best feasible plan."""

    arch: Arch
    result: Result
    size: float

    def row(self) -> dict[str, Any]:
        p, r = self.result.plan, self.result
        return {"model": self.arch.to_dict(), "total_params": r.params["total"], "active_params": r.params["active"],
                "size": self.size, "tokens_per_s": r.tokens_per_s, "tokens_per_s_per_device": r.tokens_per_s_per_device,
                "step_time": r.step_time, "mfu": r.mfu, "memory_gb": r.memory["total"] / 1e9,
                "plan": {k: p[k] for k in ("dp", "tp", "pp", "vpp", "ep", "cp", "micro_batch", "recompute", "batch")}}


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        candidates: Every model that has a feasible plan, with its fastest plan.
        front: The Pareto front (throughput up, size up), sorted by size.
        models: Model shapes enumerated.
        models_rejected: Model shapes dropped, by reason.
        configs: (model, plan) pairs enumerated.
        simulated: Pairs that reached the simulator (feasible or memory overflow).
        rejected: Pairs rejected, by reason (plan checks and memory).
        seconds: Wall time of the search.
    """

    candidates: list[Candidate]
    front: list[Candidate]
    models: int
    models_rejected: Counter
    configs: int
    simulated: int
    rejected: Counter
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def configs_per_second(self) -> float:
        """Configurations simulated per second of the whole search (enumeration and checks included)."""
        return self.simulated / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "models": self.models, "models_rejected": dict(self.models_rejected),
                "configs": self.configs, "simulated": self.simulated, "rejected": dict(self.rejected),
                "seconds": self.seconds, "configs_per_second": self.configs_per_second,
                "feasible_models": len(self.candidates), "front": [c.row() for c in self.front],
                "candidates": [c.row() for c in self.candidates]}


def _reason_key(reason: str) -> str:
    """A short category for a rejection reason (numbers blanked), for the summary counts."""
    if reason.startswith("memory overflow"):
        return "memory overflow"
    return re.sub(r"\d+(\.\d+)?", "N", reason.split(";")[0]).split(", choose")[0][:70]


def model_candidates(base: Arch, vary: dict[str, list[Any]] | None, max_total: float | None = None,
                     min_total: float | None = None, max_active: float | None = None
                     ) -> tuple[list[Arch], Counter]:
    """The product of `vary` over `base`, keeping consistent shapes inside the parameter limits."""
    vary = vary or {}
    known = set(Arch.__dataclass_fields__)
    unknown = sorted(set(vary) - known)
    if unknown:
        raise ArchError(f"vary: unknown model field(s) {unknown}; known: {sorted(known)}")
    keys = list(vary)
    out, dropped = [], Counter()
    for values in itertools.product(*(vary[k] for k in keys)):
        changes = dict(zip(keys, values))
        name = base.name + "".join(f"-{k}{v}" for k, v in changes.items())
        try:
            # head_dim / intermediate_size follow the new width unless set explicitly by `vary`
            reset = {k: 0 for k in ("head_dim", "intermediate_size") if "hidden_size" in changes and k not in changes}
            arch = base.replace(name=name, **reset, **changes)
        except (ArchError, TypeError, ValueError) as err:
            dropped[f"inconsistent shape: {str(err)[:60]}"] += 1
            continue
        pr = arch.params()
        if max_total and pr["total"] > max_total:
            dropped["total params above max_total_params"] += 1
        elif min_total and pr["total"] < min_total:
            dropped["total params below min_total_params"] += 1
        elif max_active and pr["active"] > max_active:
            dropped["active params above max_active_params"] += 1
        else:
            out.append(arch)
    return out, dropped


def plan_candidates(base: Plan, degrees: dict[str, list[Any]], devices: int, mode: str) -> list[Plan]:
    """Plans over the product of `degrees`, with dp chosen so that the plan uses exactly `devices`."""
    bad = sorted(set(degrees) - set(SEARCHABLE))
    if bad:
        raise PlanError([f"degrees: cannot search {bad}; searchable: {list(SEARCHABLE)}"])
    keys = list(degrees)
    plans = []
    for values in itertools.product(*(degrees[k] for k in keys)):
        d = dict(zip(keys, values))
        tp, pp, cp = d.get("tp", base.tp), d.get("pp", base.pp), d.get("cp", base.cp)
        width = tp * pp * (cp if mode == "train" else 1)
        if devices % width:
            continue
        plans.append(base.replace(dp=devices // width, **d))
    return plans


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates not beaten on both throughput and size by another (ties kept once), sorted by size."""
    front: list[Candidate] = []
    best = -1.0
    for c in sorted(cands, key=lambda c: (-c.size, -c.result.tokens_per_s)):
        if c.result.tokens_per_s > best:
            front.append(c)
            best = c.result.tokens_per_s
    return sorted(front, key=lambda c: c.size)


def search(base: str | Arch | dict, hardware: str | Hardware, devices: int, mode: str = "train",
           vary: dict[str, list[Any]] | None = None, plan: dict[str, Any] | Plan | str | None = None,
           degrees: dict[str, list[Any]] | None = None, max_total_params: float | None = None,
           min_total_params: float | None = None, max_active_params: float | None = None,
           max_memory_gb: float | None = None, size_metric: str = "total") -> SearchResult:
    """Search model shapes x parallel plans on `devices` devices of `hardware` (see the module docstring).

    Args:
        base: The architecture the variations start from (preset, file or `Arch`).
        hardware: Profile name or file.
        devices: Devices every plan must use.
        mode: "train" (throughput = trained tokens/s) or "infer" (generated tokens/s).
        vary: Model field -> values to try, e.g. {"num_layers": [48, 56], "num_experts": [64, 128]}.
        plan: Fixed plan fields (seq_len, global_batch, router_skew, dtype, ...).
        degrees: Plan field -> values to try (default: tp, pp, ep, micro_batch, recompute).
        max_total_params, min_total_params, max_active_params: Model-size limits.
        max_memory_gb: Memory limit per device (default: the hardware's capacity).
        size_metric: "total" or "active" parameters as the size axis of the front.
    """
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
    if size_metric not in ("total", "active"):
        raise ValueError(f"size_metric must be 'total' or 'active', got {size_metric!r}")
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    t0 = time.perf_counter()
    max_total_params, min_total_params, max_active_params, max_memory_gb = (
        None if v is None else float(v) for v in (max_total_params, min_total_params, max_active_params, max_memory_gb))
    hw = get_hardware(hardware)
    if max_memory_gb:
        import dataclasses

        hw = dataclasses.replace(hw, mem_bytes=max_memory_gb * 1e9)
    arch0 = load_arch(base)
    base_plan = load_plan(plan)
    degrees = dict(DEFAULT_DEGREES if degrees is None else degrees)
    if mode == "infer":
        degrees.pop("recompute", None)
        degrees.pop("micro_batch", None)
    archs, models_rejected = model_candidates(arch0, vary, max_total_params, min_total_params, max_active_params)
    plans = plan_candidates(base_plan, degrees, devices, mode)
    rejected: Counter = Counter()
    configs = simulated = 0
    cands = []
    for arch in archs:
        best: Result | None = None
        for p in plans:
            configs += 1
            problems = p.problems(arch, mode)
            if problems:
                rejected[_reason_key(problems[0])] += 1
                continue
            simulated += 1
            try:
                r = simulate(mode, arch, p, hw)
            except PlanError as err:
                rejected[_reason_key(err.reasons[0])] += 1
                continue
            if best is None or r.tokens_per_s > best.tokens_per_s:
                best = r
        if best is not None:
            cands.append(Candidate(arch, best, best.params[size_metric]))
    result = SearchResult(cands, pareto_front(cands), len(archs) + sum(models_rejected.values()), models_rejected,
                          configs, simulated, rejected, time.perf_counter() - t0)
    result.settings = {"base": arch0.name, "hardware": hw.name, "devices": devices, "mode": mode, "vary": vary or {},
                       "plan": base_plan.to_dict(), "degrees": degrees, "size_metric": size_metric,
                       "max_total_params": max_total_params, "min_total_params": min_total_params,
                       "max_active_params": max_active_params, "memory_limit_gb": hw.mem_bytes / 1e9}
    return result
