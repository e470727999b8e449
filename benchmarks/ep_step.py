"""Expert-parallel step time: MoE vs MoGE on the same skewed tokens, M ranks over gloo (rank i holds group i).

One MoE layer (16 experts, 4 active per token, hidden 256, expert width 512) split over M processes with
`duomind.parallel.ExpertParallelMoE`. The router and the tokens share a direction that experts of group 0
like, as a trained router's preferences would: plain top-4 MoE then sends most copies to rank 0, while MoGE
(K' = 4 / M per group, arXiv 2505.21411) sends every rank the same number by construction. Both use the same
router weights, experts and tokens. Each step is forward + backward; the all-to-all makes every rank wait for
the busiest, so the step time is the slowest rank's. Per-rank compute time replays each rank's expert work
(forward + backward on the rows it received) one rank at a time, as if each rank had its own device (here
the ranks share a few CPU cores, so a rank that waits frees a core for the busy one, which narrows the gap in
the measured step time). MoE and MoGE steps alternate.

    python benchmarks/ep_step.py                # full: benchmarks/results/ep_step.{json,png}; 2 ranks (and 4
                                                # when the machine has at least 4 cores)
    python benchmarks/ep_step.py --quick
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common


def build(kind: str, world: int, hidden: int, ffn: int, experts: int, top_k: int, skew: float, seed: int = 0):
    """The layer with skewed router weights (the same for both kinds), and the direction tokens lean to."""
    import torch

    from duomind.moe import MoELayer

    torch.manual_seed(seed)
    layer = MoELayer(hidden, experts, top_k, ffn, groups=world, grouped_routing=kind == "moge")
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(hidden, generator=g)
    u = u / u.norm()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        # experts of group 0 respond to u: tokens leaning along u prefer them
        layer.router.weight[: experts // world] += skew * u
    return layer.train(), u


def worker(rank: int, world: int, args: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from duomind.parallel import ExpertParallelMoE

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    layers, inputs = {}, {}
    for kind in ("moe", "moge"):
        layer, u = build(kind, world, args["hidden"], args["ffn"], args["experts"], args["top_k"], args["skew"])
        layers[kind] = ExpertParallelMoE(layer)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own tokens, the same for both kinds
        inputs[kind] = (torch.randn(args["tokens"], args["hidden"], generator=g) + args["lean"] * u,
                        torch.randn(args["tokens"], args["hidden"], generator=g))
    steps = {k: [] for k in layers}
    compute = {k: [] for k in layers}
    received = {}

    def step(kind: str) -> float:
        layer = layers[kind]
        x, grad = inputs[kind]
        x = x.clone().requires_grad_()
        dist.barrier()
        t0 = time.perf_counter()
        layer(x).backward(grad)
        elapsed = torch.tensor([time.perf_counter() - t0])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank is done
        layer.zero_grad(set_to_none=True)
        return float(elapsed)

    def replay(kind: str) -> float:
        # This rank's expert work (forward + backward over the rows it received in the last step), one rank
        # at a time, as if each had its own device: on a shared CPU concurrent ranks slow each other down.
        layer = layers[kind]
        counts, local = layer.last_local_counts, layer.experts
        x = torch.randn(layer.last_received, args["hidden"], requires_grad=True)
        elapsed = 0.0
        for turn in range(world):
            dist.barrier()
            if turn == rank:
                t0 = time.perf_counter()
                local(x, counts).sum().backward()
                elapsed = time.perf_counter() - t0
        local.zero_grad(set_to_none=True)
        return elapsed

    for kind in layers:
        step(kind)  # warm-up
    for _ in range(args["repeats"]):
        for kind in layers:  # alternate the contenders
            steps[kind].append(step(kind))
            received[kind] = layers[kind].last_received
            compute[kind].append(replay(kind))
    loads = {}
    for kind in layers:
        t = torch.tensor([float(received[kind]), statistics.median(compute[kind])])
        gathered = [torch.zeros(2) for _ in range(world)]
        dist.all_gather(gathered, t)
        loads[kind] = {"received": [int(v[0]) for v in gathered], "compute_s": [float(v[1]) for v in gathered]}
    if rank == 0:
        Path(out).write_text(json.dumps({"steps": steps, "loads": loads}))
    dist.destroy_process_group()


def run(world: int, args: dict) -> dict:
    import torch.multiprocessing as mp

    fd, out = tempfile.mkstemp(prefix="ep-step-", suffix=".json")
    os.close(fd)
    mp.spawn(worker, args=(world, args, out), nprocs=world, join=True)
    data = json.loads(Path(out).read_text())
    Path(out).unlink()
    steps = {k: _common.stats(v) for k, v in data["steps"].items()}
    slowest = {k: max(v["compute_s"]) for k, v in data["loads"].items()}
    busiest = {k: max(v["received"]) for k, v in data["loads"].items()}
    return {"step_time_s": steps, "per_rank": data["loads"],
            "step_time_ratio_moge_over_moe": steps["moge"]["median"] / steps["moe"]["median"],
            # context: the slowest rank's expert compute alone (what sets the pace on dedicated devices),
            # and the busiest rank's rows
            "slowest_rank_compute_ratio_moge_over_moe": slowest["moge"] / slowest["moe"],
            "busiest_rank_rows_ratio_moge_over_moe": busiest["moge"] / busiest["moe"],
            "tokens_per_rank": args["tokens"]}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="*", default=None, help="world sizes to run (default: 2, and 4 "
                   "with at least 4 cores)")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank per step")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--skew", type=float, default=1.0, help="router preference of group 0's experts")
    args = p.parse_args()
    out = _common.out_dir(args)
    ranks = args.ranks or ([2, 4] if (os.cpu_count() or 1) >= 4 else [2])
    cfg = dict(hidden=256, ffn=512, experts=16, top_k=4, tokens=args.tokens, repeats=args.repeats, skew=args.skew,
               lean=1.0, port=0)
    if args.quick:
        cfg.update(hidden=32, ffn=32, experts=8, top_k=2, tokens=64, repeats=2)
        ranks = [2]
    results = {}
    for world in ranks:
        with socket.socket() as sock:  # a free port: fixed ones collide with other jobs on the machine
            sock.bind(("127.0.0.1", 0))
            cfg["port"] = sock.getsockname()[1]
        results[str(world)] = r = run(world, cfg)
        print(f"{world} ranks: step MoE {r['step_time_s']['moe']['median'] * 1e3:.1f} ms, MoGE "
              f"{r['step_time_s']['moge']['median'] * 1e3:.1f} ms, ratio {r['step_time_ratio_moge_over_moe']:.3f}; "
              f"rows per rank MoE {r['per_rank']['moe']['received']} MoGE {r['per_rank']['moge']['received']}; "
              f"slowest rank's compute alone, MoGE / MoE {r['slowest_rank_compute_ratio_moge_over_moe']:.3f}")
    first = results[str(ranks[0])]
    result = {
        "setup": {k: v for k, v in cfg.items() if k != "port"} | {"ranks": ranks, "backend": "gloo",
                                                                  "threads_per_rank": 1},
        "runs": results,
        "step_time_ratio_moge_over_moe": first["step_time_ratio_moge_over_moe"],
        "slowest_rank_compute_ratio_moge_over_moe": first["slowest_rank_compute_ratio_moge_over_moe"],
        "busiest_rank_rows_ratio_moge_over_moe": first["busiest_rank_rows_ratio_moge_over_moe"],
        "ranks_of_headline": ranks[0],
        "goal": "step_time_ratio_moge_over_moe < 1",
    }
    _common.write("ep_step", result, out)

    plt = _common.figure()
    fig, axes = plt.subplots(1, len(ranks), figsize=(5.5 * len(ranks), 3.6), dpi=120, squeeze=False)
    for ax, world in zip(axes[0], ranks):
        r = results[str(world)]
        width = 0.38
        for i, (kind, color) in enumerate((("moe", "tab:red"), ("moge", "tab:blue"))):
            comp = [c * 1e3 for c in r["per_rank"][kind]["compute_s"]]
            ax.bar([x + width * i for x in range(world)], comp, width=width, color=color,
                   label=f"{kind}: step {r['step_time_s'][kind]['median'] * 1e3:.0f} ms")
            ax.axhline(r["step_time_s"][kind]["median"] * 1e3, color=color, ls="--", lw=1)
            for x, rows in enumerate(r["per_rank"][kind]["received"]):
                ax.text(x + width * i, comp[x], str(rows), ha="center", va="bottom", fontsize=6)
        ax.set_xticks([x + width / 2 for x in range(world)], [f"rank {x}" for x in range(world)])
        ax.set_ylabel("expert fwd+bwd alone, ms (numbers: rows)")
        ax.set_title(f"{world} ranks: MoGE / MoE step time {r['step_time_ratio_moge_over_moe']:.2f} "
                     "(dashed: step)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ep_step.png")


if __name__ == "__main__":
    sys.exit(main())
