"""Configuration-search speed: simulated (model x parallel plan) configurations per second.

Runs the MoGE search of recipes/sim-search-moge.yaml (Pangu Pro MoE variants on 64 Ascend 910B: layers,
width, experts, expert width x TP, PP, EP, micro-batch, recompute) several times and reports the median
rate with its spread, the Pareto front of throughput vs total parameters, and a plot of the front.
`configs_per_second` counts only configurations that reached the simulator (cheap plan-check rejections
are not counted) over the wall time of the whole search.

    python benchmarks/sim_search.py            # full: benchmarks/results/sim_search.{json,png}
    python benchmarks/sim_search.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "sim-search-moge.yaml"


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    out = _common.out_dir(args)

    from duomind.config import load_mapping
    from duomind.sim.report import format_search, plot_search
    from duomind.sim.search import search

    space = load_mapping(RECIPE)
    space.pop("size_metric", None)
    if args.quick:
        args.repeats = 2
        space["vary"] = {"num_layers": [40, 48], "num_experts": [64, 128]}
        space["degrees"] = {"tp": [1, 2], "pp": [1, 2, 4], "ep": [1, 8], "recompute": ["selective"]}
    base, hardware, devices = space.pop("base"), space.pop("hardware"), space.pop("devices")
    runs = [search(base, hardware, devices, **space) for _ in range(args.repeats)]
    rates = [r.configs_per_second for r in runs]
    st = _common.stats(rates)
    last = runs[-1]
    print(format_search(last))
    print(f"configs/s over {len(runs)} runs: median {st['median']:.0f} (p25 {st['p25']:.0f}, p75 {st['p75']:.0f})")
    result = {
        "setup": {"recipe": str(RECIPE.relative_to(RECIPE.parent.parent)), "quick": args.quick, "repeats": len(runs),
                  "settings": last.settings},
        "configs_per_second": st["median"],
        "configs_per_second_stats": st,
        "configs_per_run": last.configs,
        "simulated_per_run": last.simulated,
        "seconds_per_run": _common.stats([r.seconds for r in runs]),
        "rejected": dict(last.rejected),
        "models": last.models,
        "feasible_models": len(last.candidates),
        "front": [c.row() for c in last.front],
        "goal": "configs_per_second >= 1000",
    }
    _common.write("sim_search", result, out)
    plot_search(last, out / "sim_search.png")


if __name__ == "__main__":
    sys.exit(main())
