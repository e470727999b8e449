"""Human-readable reports and PNG charts of simulation and search results (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

from duomind.sim.search import SearchResult
from duomind.sim.simulate import Result

GB = 1e9


def _si(x: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def format_result(r: Result) -> str:
    """A plain-text report: headline numbers, the step-time breakdown and memory per device."""
    p = r.plan
    lines = [f"{r.mode} {r.model} on {r.devices} x {r.hardware}  (dp {p['dp']} tp {p['tp']} pp {p['pp']} vpp {p['vpp']}"
             f" ep {p['ep']} cp {p['cp']})",
             f"  params: {_si(r.params['total'])} total, {_si(r.params['active'])} active"]
    if r.mode == "train":
        lines += [f"  step time: {_seconds(r.step_time)}   ({r.details['micro_batches']} micro-batches of "
                  f"{p['micro_batch']} x {p['seq_len']} tokens per replica)",
                  f"  throughput: {_si(r.tokens_per_s)} tokens/s ({_si(r.tokens_per_s_per_device)} per device)"
                  f"   MFU {r.mfu * 100:.1f}%"]
    else:
        lines += [f"  decode step (TPOT): {_seconds(r.step_time)}   TTFT: {_seconds(r.details['ttft_s'])}   "
                  f"batch {p['batch']} per replica, mean context {r.details['mean_context']:.0f}",
                  f"  throughput: {_si(r.tokens_per_s)} generated tokens/s ({_si(r.tokens_per_s_per_device)} per "
                  f"device)   prefill {_si(r.details['prefill_tokens_per_s'])} tokens/s   MFU {r.mfu * 100:.1f}%"]
    if r.details.get("ep_load_factor", 1.0) != 1.0 or p["ep"] > 1:
        lines.append(f"  expert-parallel load factor (busiest / mean device): {r.details['ep_load_factor']:.3f}")
    lines.append("  breakdown:")
    for k, v in sorted(r.breakdown.items(), key=lambda kv: -kv[1]):
        if v > 0:
            lines.append(f"    {k:14s} {_seconds(v):>11s}  {v / r.step_time * 100:5.1f}%")
    lines.append(f"  memory per device (busiest): {r.memory['total'] / GB:.2f} GB of {r.memory['capacity'] / GB:.0f} GB")
    for k, v in r.memory.items():
        if k not in ("total", "capacity"):
            lines.append(f"    {k:14s} {v / GB:9.2f} GB")
    return "\n".join(lines)


def format_search(s: SearchResult, top: int = 20) -> str:
    """The search summary and its Pareto front as a table."""
    lines = [f"search: {s.models} model shapes x plans on {s.settings['devices']} x {s.settings['hardware']} "
             f"({s.settings['mode']}); {s.configs} configurations, {s.simulated} simulated in {s.seconds:.2f} s "
             f"({s.configs_per_second:.0f}/s); {len(s.candidates)} models feasible"]
    for what, counts in (("model shapes dropped", s.models_rejected), ("configurations rejected", s.rejected)):
        if counts:
            lines.append(f"  {what}: " + "; ".join(f"{n} x {k}" for k, n in counts.most_common(6)))
    if not s.front:
        lines.append("  no feasible configuration: relax the constraints or add devices")
        return "\n".join(lines)
    lines.append(f"  Pareto front (more {s.settings['size_metric']} parameters vs more tokens/s):")
    head = f"    {'total':>8s} {'active':>8s} {'tokens/s':>10s} {'/device':>9s} {'MFU':>6s} {'mem GB':>7s}  plan / shape"
    lines.append(head)
    for c in s.front[:top]:
        r, pl = c.row(), c.result.plan
        shape = ", ".join(f"{k}={r['model'][k]}" for k in s.settings["vary"] or {})
        lines.append(f"    {_si(r['total_params']):>8s} {_si(r['active_params']):>8s} {_si(r['tokens_per_s']):>10s} "
                     f"{_si(r['tokens_per_s_per_device']):>9s} {r['mfu'] * 100:5.1f}% {r['memory_gb']:7.1f}  "
                     f"dp{pl['dp']} tp{pl['tp']} pp{pl['pp']} ep{pl['ep']} " + (
                         f"mb{pl['micro_batch']} {pl['recompute']}" if c.result.mode == "train" else f"batch{pl['batch']}")
                     + f"  {shape}")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_breakdown(results: list[Result] | Result, path: str | Path, labels: list[str] | None = None) -> Path:
    """A stacked bar per result: where the step time goes."""
    results = [results] if isinstance(results, Result) else list(results)
    labels = labels or [f"{r.model}\n{r.hardware} x{r.devices}" for r in results]
    plt = _plt()
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.breakdown if k not in keys and r.breakdown[k] > 0]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(results) + 2.5), 4), dpi=120)
    bottom = [0.0] * len(results)
    cmap = plt.get_cmap("tab20")
    for i, k in enumerate(keys):
        vals = [r.breakdown.get(k, 0.0) / r.step_time * 100 for r in results]
        ax.bar(range(len(results)), vals, bottom=bottom, label=k, color=cmap(i % 20), width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    ax.set_ylabel("% of step time")
    unit = "decode step" if results[0].mode == "infer" else "training step"
    ax.set_title(f"{unit} breakdown; " + ", ".join(_seconds(r.step_time) for r in results), fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_search(s: SearchResult, path: str | Path) -> Path:
    """Every feasible model's best throughput against its size, the Pareto front joined by a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    metric = s.settings["size_metric"]
    xs = [c.size / 1e9 for c in s.candidates]
    ys = [c.result.tokens_per_s for c in s.candidates]
    ax.scatter(xs, ys, s=14, color="0.6", label="feasible models (best plan each)")
    ax.plot([c.size / 1e9 for c in s.front], [c.result.tokens_per_s for c in s.front], "o-", color="C3",
            label="Pareto front")
    ax.set_xlabel(f"{metric} parameters (B)")
    ax.set_ylabel("tokens / s (all devices)")
    ax.set_title(f"{s.settings['base']} variants on {s.settings['devices']} x {s.settings['hardware']} "
                 f"({s.settings['mode']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
