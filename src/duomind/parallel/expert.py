"""Expert parallelism: one MoE / MoGE layer split over M ranks, rank i holding expert group i.

Every rank keeps the router and the shared experts (replicated, as data parallelism would) and its own
N / M routed experts. For the tokens of its own batch a rank::

    route locally -> sort copies by expert (so copies for rank j are contiguous) -> all-to-all: counts
    -> all-to-all: token copies -> regroup the received copies by local expert -> local experts
    -> all-to-all back -> weighted sum per token (+ shared experts)

The all-to-all is a synchronisation point, so the rank that receives the most copies sets the step time.
Under MoGE (arXiv 2505.21411) every rank receives exactly K' copies of every token of every rank; under
plain top-K MoE the load follows the router's preferences. Forward and backward equal the single-process
`MoELayer` on the concatenation of all ranks' tokens (tests/test_parallel.py), with gloo on CPU and NCCL on
CUDA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from duomind.moe import Experts, MoELayer, sort_by_expert


class ExpertParallelError(ValueError):
    """The process group does not fit the layer; the message says what to change."""


class _AllToAll(torch.autograd.Function):
    """Variable-size all-to-all of rows; its gradient is the all-to-all back with the splits swapped."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        back = grad.new_empty(sum(ctx.send), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv,
                               group=ctx.group)
        return back, None, None, None


class ExpertParallelMoE(nn.Module):
    """A `MoELayer` whose routed experts are spread over an expert-parallel process group.

    Args:
        layer: The full layer (same weights on every rank, e.g. from the same checkpoint); this rank keeps
            the router, the shared experts and its own group of experts (copied).
        group: The process group (default: the world). Its size must equal `layer.groups`.
    """

    def __init__(self, layer: MoELayer, group: Any = None) -> None:
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise ExpertParallelError("expert parallelism needs torch.distributed initialised: launch with "
                                      "torchrun and call dist.init_process_group first.")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if world != layer.groups:
            raise ExpertParallelError(
                f"expert parallelism puts one expert group on each rank, but the process group has {world} ranks "
                f"and the layer has expert_groups={layer.groups}; launch {layer.groups} processes (or set "
                f"expert_groups={world}, which must divide num_experts={layer.num_experts}).")
        self.group, self.world, self.rank = group, world, rank
        self.num_experts, self.top_k = layer.num_experts, layer.top_k
        self.local = layer.num_experts // world
        self.router, self.shared = layer.router, layer.shared
        full = layer.experts
        self.experts = Experts(self.local, full.gate_up_proj.shape[-1], full.ffn, full.act_name, full.impl)
        self.experts.to(full.gate_up_proj.device, full.gate_up_proj.dtype)
        sl = slice(rank * self.local, (rank + 1) * self.local)
        with torch.no_grad():
            self.experts.gate_up_proj.copy_(full.gate_up_proj[sl])
            self.experts.down_proj.copy_(full.down_proj[sl])
        self.last_received = 0  # copies this rank's experts processed in the last forward
        self.last_local_counts: torch.Tensor | None = None  # (N/M,) of them per local expert
        self.last_counts: torch.Tensor | None = None  # (N,) global copies per expert, last forward
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (T, d) this rank's tokens
        routing = self.router(flat)
        order, counts = sort_by_expert(routing.experts, self.num_experts)  # copies for rank j are contiguous
        # How many copies this rank sends to each rank's experts, and receives from each rank.
        send_counts = counts.view(self.world, self.local)  # (M, N/M)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts.contiguous(), group=self.group)  # row j: from rank j
        send = send_counts.sum(1).tolist()
        recv = recv_counts.sum(1).tolist()
        token = order // self.top_k
        received = _AllToAll.apply(flat.index_select(0, token), send, recv, self.group)  # (R, d)
        # Received rows are grouped by source rank, then by expert; the experts need them by expert.
        local_ids = torch.arange(self.local, device=x.device).repeat(self.world)
        expert_of_row = local_ids.repeat_interleave(recv_counts.flatten())
        regroup = torch.argsort(expert_of_row, stable=True)
        y_local = self.experts(received.index_select(0, regroup), recv_counts.sum(0))
        y_recv = torch.empty_like(y_local).index_copy(0, regroup, y_local) if y_local.numel() else y_local
        y = _AllToAll.apply(y_recv, recv, send, self.group)  # (S, d) back in this rank's sorted order
        y = y * routing.weights.flatten()[order].unsqueeze(-1).to(y.dtype)
        out = torch.zeros_like(flat).index_add_(0, token, y)
        if self.shared is not None:
            out = out + self.shared(flat)
        self.last_received = int(expert_of_row.numel())
        self.last_local_counts = recv_counts.sum(0).detach()
        global_counts = counts.detach().clone()
        dist.all_reduce(global_counts, group=self.group)
        self.last_counts = global_counts
        self.aux_loss = self._aux_loss(routing.probs, global_counts) if self.training else None
        return out.view(shape)

    def _aux_loss(self, probs: torch.Tensor, global_counts: torch.Tensor) -> torch.Tensor:
        # This rank's share of the batch-level balance loss over ALL ranks' tokens: f uses the global counts,
        # P_e sums this rank's scores over the global token count. Summed over ranks it is the single-process
        # loss, and its gradient here is exactly this rank's part.
        tokens = torch.tensor([probs.shape[0]], dtype=torch.float64, device=probs.device)
        dist.all_reduce(tokens, group=self.group)
        total = float(tokens)
        f = global_counts.to(probs.dtype) / (total * self.top_k)
        return self.num_experts * (f * probs.sum(0) / total).sum()

    def gather_experts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' expert weights, concatenated in expert order (for checkpoints and tests)."""
        parts = []
        for w in (self.experts.gate_up_proj, self.experts.down_proj):
            buf = [torch.empty_like(w) for _ in range(self.world)]
            dist.all_gather(buf, w.detach().contiguous(), group=self.group)
            parts.append(torch.cat(buf))
        return parts[0], parts[1]
