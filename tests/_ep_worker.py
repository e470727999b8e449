"""Worker for tests/test_parallel.py, run under torchrun: expert-parallel layer vs the single-process layer.

Each rank writes rank<r>.json with the largest differences it saw (forward, input gradient, router, shared
and expert gradients, balance loss) and what it received, for every layer kind.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from duomind.config import ModelConfig
from duomind.model import MLP
from duomind.moe import MoELayer
from duomind.parallel import ExpertParallelError, ExpertParallelMoE

D, N, F, K_PER_GROUP = 16, 8, 12, 1


def build(kind: str, world: int, dtype: torch.dtype = torch.float32) -> MoELayer:
    torch.manual_seed(0)
    moge = kind == "moge"
    k = K_PER_GROUP * world if moge else 2
    shared = MLP(ModelConfig(hidden_size=D, num_attention_heads=4, num_key_value_heads=2), intermediate_size=F)
    layer = MoELayer(D, N, k, F, groups=world, grouped_routing=moge, renormalize=not moge, scale=moge, shared=shared)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape) * 0.25)
    return layer.to(dtype).train()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [5 + 3 * r for r in range(world)]  # ranks hold different numbers of tokens
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    report: dict = {}
    # float64 shows the algorithm is exact; float32 is what runs (replicated-parameter gradients are sums over
    # ranks there, so their rounding differs from one big sum: the test checks those relative to their size)
    for kind, dtype in (("moe", torch.float64), ("moge", torch.float64), ("moe32", torch.float32),
                        ("moge32", torch.float32)):
        layer = build(kind.removesuffix("32"), world, dtype)
        g = torch.Generator().manual_seed(1)
        X = (torch.randn(sum(sizes), D, generator=g) + 1.5 * torch.randn(1, D, generator=g)).to(dtype)  # skewed
        G = torch.randn(sum(sizes), D, generator=g).to(dtype)
        c = 0.3  # balance-loss weight, so its gradient path is checked too

        ref = copy.deepcopy(layer)
        Xr = X.clone().requires_grad_()
        y_ref = ref(Xr)
        ((y_ref * G).sum() + c * ref.aux_loss).backward()

        ep = ExpertParallelMoE(copy.deepcopy(layer))
        x = X[mine].clone().requires_grad_()
        y = ep(x)
        ((y * G[mine]).sum() + c * ep.aux_loss).backward()

        diffs = {"forward": (y - y_ref[mine]).abs().max().item(),
                 "input_grad": (x.grad - Xr.grad[mine]).abs().max().item()}
        sizes_of = {}
        for name in ("router", "shared"):  # replicated modules: their gradients sum over ranks
            worst, size = 0.0, 0.0
            for (_, p), (_, q) in zip(getattr(ep, name).named_parameters(), getattr(ref, name).named_parameters()):
                grad = p.grad.clone()
                dist.all_reduce(grad)
                worst = max(worst, (grad - q.grad).abs().max().item())
                size = max(size, q.grad.abs().max().item())
            diffs[name + "_grad"] = worst
            sizes_of[name + "_grad"] = size
        local = slice(rank * (N // world), (rank + 1) * (N // world))
        diffs["expert_grad"] = max((ep.experts.gate_up_proj.grad - ref.experts.gate_up_proj.grad[local]).abs().max().item(),
                                   (ep.experts.down_proj.grad - ref.experts.down_proj.grad[local]).abs().max().item())
        aux = ep.aux_loss.detach().clone()
        dist.all_reduce(aux)
        diffs["aux_loss"] = abs(float(aux) - float(ref.aux_loss))
        gate_up, _ = ep.gather_experts()
        diffs["gathered_weights"] = (gate_up - layer.experts.gate_up_proj).abs().max().item()
        report[kind] = {"diffs": diffs, "received": ep.last_received, "tokens": sum(sizes), "top_k": layer.top_k,
                        "grad_scale": Xr.grad.abs().max().item(), "replicated_grad_size": sizes_of}
    try:
        ExpertParallelMoE(build("moe", world * 2))
        report["wrong_world"] = "no error"
    except ExpertParallelError as err:
        report["wrong_world"] = str(err)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
