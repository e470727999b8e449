"""Mixture-of-experts layers: routers (top-k, MoGE), stacked experts with dropless dispatch, load metrics.

One MoE layer, for T tokens and N experts in M contiguous groups (group g = device g under expert
parallelism)::

    x (T, d) --router--> probs (T, N) = softmax over ALL experts
                         MoE : top-K of N                  -> experts (T, K), weights (renormalised or not)
                         MoGE: top-K' inside each group    -> experts (T, M*K'), weights never renormalised
             --sort the T*K token copies by expert--> one grouped matmul per projection over stacked
               weights (N, 2F, d) and (N, d, F): no capacity, no dropped tokens --> weighted sum per token
             (+ shared experts, which every token takes)

MoGE (Pangu Pro MoE, arXiv 2505.21411) makes every device receive exactly K' * T assignments, so the
imbalance score IS = (max device load - min device load) / T is 0 by construction; plain top-K MoE
(Mixtral, Qwen3-MoE) usually has IS > 0. Balancing inside groups (and for MoE overall) comes from the
batch-level auxiliary loss (Switch Transformer, arXiv 2101.03961) or the auxiliary-loss-free router bias
(DeepSeek-V3, arXiv 2412.19437).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# CPU choice between torch._grouped_mm (its CPU kernel is a C++ loop of matmuls: no Python overhead per
# expert, but it materialises the (S, 2F) intermediate) and a Python loop over experts that keeps each
# expert's rows in cache. Measured in benchmarks/moe_layer.py (duomind_loop vs duomind_grouped): the
# grouped kernel wins while experts get few rows each, the loop once they get about this many on average.
# On CUDA the grouped kernel is always used.
LOOP_MIN_ROWS_PER_EXPERT = 128
_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


class Routing(NamedTuple):
    """What a router decided for T tokens.

    Attributes:
        weights: (T, K) combine weights of the chosen experts (float32).
        experts: (T, K) chosen expert ids (int64).
        probs: (T, N) softmax over all experts (float32), for the balance loss and metrics.
    """

    weights: torch.Tensor
    experts: torch.Tensor
    probs: torch.Tensor


class TopKRouter(nn.Module):
    """Softmax top-k router (Mixtral / Qwen3-MoE style).

    Args:
        hidden: Model width d.
        num_experts: Routed experts N.
        top_k: Experts per token K.
        renormalize: Rescale the K chosen weights to sum to 1.
        scale: Learned per-expert scale on the chosen weights (initialised to 1).
        bias: Keep a per-expert selection bias for auxiliary-loss-free balancing (a buffer, not trained).
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, renormalize: bool = False, scale: bool = False,
                 bias: bool = False) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must lie in 1..num_experts={num_experts}.")
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        self.expert_scale = nn.Parameter(torch.ones(num_experts)) if scale else None
        if bias:
            self.register_buffer("expert_bias", torch.zeros(num_experts))
        else:
            self.expert_bias = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(T, N) softmax over all experts, in float32 or wider (as HF computes it)."""
        logits = F.linear(x, self.weight)
        return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)

    def select(self, probs: torch.Tensor) -> torch.Tensor:
        """(T, K) expert ids: the K best of (probs + bias); the bias steers choice, never the weights."""
        scores = probs if self.expert_bias is None else probs + self.expert_bias
        return scores.topk(self.top_k, dim=-1).indices

    def forward(self, x: torch.Tensor) -> Routing:
        probs = self.scores(x)
        experts = self.select(probs)
        return Routing(self._weights(probs, experts), experts, probs)

    def _weights(self, probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        weights = probs.gather(-1, experts)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        if self.expert_scale is not None:
            weights = weights * self.expert_scale[experts]
        return weights


class GroupedRouter(TopKRouter):
    """MoGE router (Pangu Pro MoE, arXiv 2505.21411): the same number of experts from every group.

    Steps: (1) one softmax over all N experts; (2) split the scores into M contiguous groups of N / M;
    (3) take the top K' = K / M inside each group; (4) the chosen softmax scores are the weights, never
    renormalised, optionally times a learned per-expert scale. Every group, hence every device, gets exactly
    K' copies of every token.

    Args:
        hidden: Model width d.
        num_experts: Routed experts N (a multiple of `groups`).
        top_k: Experts per token K over all groups (a multiple of `groups`).
        groups: Number of groups M.
        scale: Learned per-expert scale (the released Pangu Pro MoE has one).
        bias: Per-expert selection bias for auxiliary-loss-free balancing inside groups.
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, groups: int, scale: bool = False,
                 bias: bool = False) -> None:
        if num_experts % groups:
            raise ValueError(f"num_experts={num_experts} is not divisible by groups={groups}; choose a multiple.")
        if top_k % groups or top_k // groups > num_experts // groups:
            raise ValueError(f"top_k={top_k} must be a multiple of groups={groups} with at most "
                             f"{num_experts // groups} (the group size) per group.")
        super().__init__(hidden, num_experts, top_k, renormalize=False, scale=scale, bias=bias)
        self.groups = groups

    def select(self, probs: torch.Tensor) -> torch.Tensor:
        T, size = probs.shape[0], self.num_experts // self.groups
        scores = probs if self.expert_bias is None else probs + self.expert_bias
        local = scores.view(T, self.groups, size).topk(self.top_k // self.groups, dim=-1).indices  # (T, M, K')
        offsets = torch.arange(0, self.num_experts, size, device=probs.device)  # first expert of each group
        return (local + offsets[:, None]).flatten(1)  # (T, K), group by group


def _act(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu_tanh":
        return lambda t: F.gelu(t, approximate="tanh")
    raise ValueError(f"activation {name!r} is not supported; use 'silu' or 'gelu_tanh'.")


class _GroupedLinear(torch.autograd.Function):
    """y[rows of expert e] = x[rows of e] @ W[e]^T for rows sorted by expert; backward writes dW in place.

    Autograd through `W[e]` slices would allocate a full-size zero gradient per expert; this keeps one.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor,
                spans: list[tuple[int, int, int]], grouped: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight, counts)
        ctx.spans, ctx.grouped = spans, grouped
        if grouped:
            return torch._grouped_mm(x, weight.transpose(-2, -1), offs=counts.cumsum(0, dtype=torch.int32))
        out = x.new_empty(x.shape[0], weight.shape[1])
        for e, s, t in spans:
            torch.mm(x[s:t], weight[e].t(), out=out[s:t])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight, counts = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = None
        offs = counts.cumsum(0, dtype=torch.int32) if ctx.grouped else None
        if ctx.needs_input_grad[0]:
            if ctx.grouped:
                gx = torch._grouped_mm(grad, weight, offs=offs)
            else:
                gx = x.new_empty(x.shape)
                for e, s, t in ctx.spans:
                    torch.mm(grad[s:t], weight[e], out=gx[s:t])
        if ctx.needs_input_grad[1]:
            if ctx.grouped:
                gw = torch._grouped_mm(grad.t(), x, offs=offs)  # (E, out, in); zero for empty experts
            else:
                gw = torch.zeros_like(weight)
                for e, s, t in ctx.spans:
                    torch.mm(grad[s:t].t(), x[s:t], out=gw[e])
        return gx, gw, None, None, None


def _spans(counts: torch.Tensor) -> list[tuple[int, int, int]]:
    """(expert, start, end) row ranges of the non-empty experts, for rows sorted by expert."""
    spans, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            spans.append((e, start, start + n))
            start += n
    return spans


class Experts(nn.Module):
    """N gated-MLP experts as stacked weights: gate_up_proj (N, 2F, d) and down_proj (N, d, F).

    The layout (and names) match Hugging Face transformers 5's fused experts, so conversion is a stack.

    Args:
        num_experts: N.
        hidden: Model width d.
        ffn: Expert width F.
        act: "silu" (SwiGLU) or "gelu_tanh".
        impl: "auto" (grouped matmul on CUDA; on CPU grouped below LOOP_MIN_ROWS_PER_EXPERT rows per expert,
            else the loop), "grouped" (torch._grouped_mm) or "loop" (one matmul per non-empty expert).
    """

    def __init__(self, num_experts: int, hidden: int, ffn: int, act: str = "silu", impl: str = "auto") -> None:
        super().__init__()
        if impl not in ("auto", "grouped", "loop"):
            raise ValueError(f"impl={impl!r} is not one of 'auto', 'grouped', 'loop'.")
        if impl == "grouped" and not _HAS_GROUPED_MM:
            raise ValueError("impl='grouped' needs torch._grouped_mm (torch >= 2.8); use impl='loop'.")
        self.num_experts, self.ffn, self.impl, self.act_name = num_experts, ffn, impl, act
        self.act = _act(act)
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * ffn, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, ffn))

    def _grouped(self, rows: int) -> bool:
        if self.impl != "auto":
            return self.impl == "grouped"
        w = self.gate_up_proj
        # the kernel takes 16-bit and 32-bit floats with rows aligned to 16 bytes
        fits = (_HAS_GROUPED_MM and w.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and all(n * w.element_size() % 16 == 0 for n in (w.shape[-1], self.ffn)))
        return fits and (w.device.type == "cuda" or rows < LOOP_MIN_ROWS_PER_EXPERT * self.num_experts)

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Apply expert e to its rows of `x` (S, d), which are sorted by expert with `counts` (N,) per expert."""
        if x.shape[0] == 0:
            return x.new_zeros(0, self.down_proj.shape[1]) + 0 * self.gate_up_proj.sum()  # keeps the graph
        grouped = self._grouped(x.shape[0])
        spans = [] if grouped and x.is_cuda else _spans(counts)  # spans need a host sync: skip it on CUDA
        if torch.is_grad_enabled() and (x.requires_grad or self.gate_up_proj.requires_grad):
            h = _GroupedLinear.apply(x, self.gate_up_proj, counts, spans, grouped)  # (S, 2F)
            gate, up = h.chunk(2, dim=-1)
            return _GroupedLinear.apply(self.act(gate) * up, self.down_proj, counts, spans, grouped)  # (S, d)
        if grouped:  # in place where possible: fresh multi-MB buffers cost page faults on CPU
            offs = counts.cumsum(0, dtype=torch.int32)
            gate, up = torch._grouped_mm(x, self.gate_up_proj.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
            return torch._grouped_mm(self.act(gate).mul_(up), self.down_proj.transpose(-2, -1), offs=offs)
        # Inference: each expert's intermediate stays in cache instead of materialising (S, 2F).
        out = x.new_empty(x.shape[0], self.down_proj.shape[1])
        for e, s, t in spans:
            gate, up = F.linear(x[s:t], self.gate_up_proj[e]).chunk(2, dim=-1)
            torch.mm(self.act(gate) * up, self.down_proj[e].t(), out=out[s:t])
        return out

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert `e` alone on rows `x` (..., d): the reference the dispatch must agree with."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(self.act(gate) * up, self.down_proj[e])


def sort_by_expert(experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order the T*K token copies by expert (stable, so ties keep token order).

    Returns:
        order: (T*K,) positions into `experts.flatten()`; copy i is token order[i] // K.
        counts: (N,) copies per expert.
    """
    flat = experts.flatten()
    return torch.argsort(flat, stable=True), torch.bincount(flat, minlength=num_experts)


def dropless_dispatch(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Sorted, dropless MoE forward (MegaBlocks-style, arXiv 2211.15841): every token copy is computed.

    Steps: (1) sort the T*K copies by expert; (2) gather their inputs; (3) grouped matmuls over the
    stacked expert weights; (4) scale by the routing weights and sum each token's K copies.

    Args:
        x: (T, d) tokens.
        routing: The router's decision for `x`.
        experts: Stacked experts.

    Returns:
        (T, d) the weighted sum of each token's chosen experts.
    """
    T, K = routing.experts.shape
    inference = not torch.is_grad_enabled()
    if T == 1 and inference:
        return _decode_one(x, routing, experts)
    order, counts = sort_by_expert(routing.experts, experts.num_experts)
    token = order // K  # (S,) the token each sorted copy comes from
    weights = routing.weights.flatten()[order].unsqueeze(-1).to(x.dtype)  # (S, 1)
    if inference and not experts._grouped(T * K):
        return _fused_loop(x, token, weights, counts, experts)
    y = experts(x.index_select(0, token), counts)  # (S, d)
    y = y.mul_(weights) if inference else y * weights
    return torch.zeros_like(x).index_add_(0, token, y)


def _fused_loop(x: torch.Tensor, token: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor,
                experts: Experts) -> torch.Tensor:
    # Inference with many rows per expert: gather, compute, weight and scatter one expert at a time, so its
    # rows and intermediate stay in cache instead of materialising (S, d) and (S, 2F) arrays.
    out = torch.zeros_like(x)
    for e, s, t in _spans(counts):
        rows = token[s:t]
        gate, up = F.linear(x.index_select(0, rows), experts.gate_up_proj[e]).chunk(2, dim=-1)
        h = experts.act(gate).mul_(up).mul_(weights[s:t])
        out.index_add_(0, rows, F.linear(h, experts.down_proj[e]))
    return out


def _decode_one(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    # One token (decoding): its K experts are distinct, so there is nothing to sort; each expert's output is
    # scaled and accumulated inside one addmm.
    out = torch.zeros_like(x)
    for e, w in zip(routing.experts[0].tolist(), routing.weights[0].tolist()):
        gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        out.addmm_(experts.act(gate).mul_(up), experts.down_proj[e].t(), alpha=w)
    return out


def balance_loss(probs: torch.Tensor, counts: torch.Tensor, top_k: int) -> torch.Tensor:
    """Batch-level auxiliary balance loss (Switch Transformer, arXiv 2101.03961), for top-K routing.

    L = N * sum_e f_e * P_e with f_e = copies routed to e / (T * K) and P_e = mean softmax score of e over
    the batch. Only P carries gradient. It is 1 when routing is uniform and grows as it concentrates.

    Args:
        probs: (T, N) softmax scores over all experts.
        counts: (N,) copies routed to each expert in the same batch.
        top_k: Experts per token K.
    """
    T, N = probs.shape
    f = counts.to(probs.dtype) / max(T * top_k, 1)
    return N * (f * probs.mean(0)).sum()


def device_loads(counts: torch.Tensor, groups: int) -> torch.Tensor:
    """(M,) copies each device receives when device g holds the g-th contiguous group of experts."""
    return counts.reshape(groups, -1).sum(-1)


def imbalance_score(counts: torch.Tensor, groups: int, tokens: int) -> float:
    """IS = (max device load - min device load) / tokens (arXiv 2505.21411); 0 means perfectly balanced."""
    loads = device_loads(counts, groups)
    return float(loads.max() - loads.min()) / max(tokens, 1)


class MoELayer(nn.Module):
    """A routed-expert MLP: router, stacked experts, optional shared experts, dropless dispatch.

    After each forward the layer keeps `last_experts` (T, K) for load metrics and, in training mode,
    `aux_loss` (the batch-level balance loss of that forward).

    Args:
        hidden: Model width d.
        num_experts: Routed experts N.
        top_k: Experts per token K.
        ffn: Expert width F.
        groups: Expert groups M (devices); MoGE routes within them.
        grouped_routing: MoGE (True) or plain top-k MoE (False).
        renormalize: Renormalise the chosen weights (MoE only).
        scale: Learned per-expert weight scale.
        bias: Auxiliary-loss-free selection bias.
        act: Expert activation.
        shared: Module every token also goes through (shared experts), or None.
        impl: Expert matmul implementation (see `Experts`).
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, ffn: int, groups: int = 1,
                 grouped_routing: bool = False, renormalize: bool = False, scale: bool = False, bias: bool = False,
                 act: str = "silu", shared: nn.Module | None = None, impl: str = "auto") -> None:
        super().__init__()
        if num_experts % groups:
            raise ValueError(f"num_experts={num_experts} is not divisible by groups={groups}; every group (one "
                             f"per device) must hold the same number of experts.")
        if grouped_routing:
            self.router: TopKRouter = GroupedRouter(hidden, num_experts, top_k, groups, scale=scale, bias=bias)
        else:
            self.router = TopKRouter(hidden, num_experts, top_k, renormalize=renormalize, scale=scale, bias=bias)
        self.experts = Experts(num_experts, hidden, ffn, act, impl)
        self.shared = shared
        self.num_experts, self.top_k, self.groups = num_experts, top_k, groups
        self.last_experts: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Any, shared: nn.Module | None = None, impl: str = "auto") -> MoELayer:
        """Build from a `ModelConfig` (or the HF `DuoMindConfig`) with mlp_type "moe" or "moge"."""
        return cls(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size,
                   groups=cfg.expert_groups, grouped_routing=cfg.mlp_type == "moge", renormalize=cfg.norm_topk_prob,
                   scale=cfg.router_scale, bias=cfg.router_bias_update_rate > 0, act=cfg.hidden_act, shared=shared,
                   impl=impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (T, d), all batch rows together: routing is per token
        routing = self.router(flat)
        y = dropless_dispatch(flat, routing, self.experts)
        if self.shared is not None:
            y = y + self.shared(flat)
        self.last_experts = routing.experts.detach()
        if self.training:
            counts = torch.bincount(routing.experts.flatten(), minlength=self.num_experts)
            self.aux_loss = balance_loss(routing.probs, counts, self.top_k)
        else:
            self.aux_loss = None
        return y.view(shape)


def moe_layers(model: nn.Module) -> list[tuple[str, MoELayer]]:
    """The (name, layer) of every MoE layer in `model`, in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]


class LoadMeter:
    """Per-layer expert loads of the forwards since the last `reset` (one optimizer step's micro-batches).

    Call `update()` after each forward; `all_reduce()` sums over data-parallel ranks; `metrics()` gives the
    numbers the trainer logs.
    """

    def __init__(self, model: nn.Module, groups: int | None = None) -> None:
        self.layers = [m for _, m in moe_layers(model)]
        self.groups = groups or (self.layers[0].groups if self.layers else 1)
        n = self.layers[0].num_experts if self.layers else 0
        if self.layers and n % self.groups:
            raise ValueError(f"groups={self.groups} does not divide num_experts={n}; choose a divisor.")
        self.counts = torch.zeros(len(self.layers), n, dtype=torch.float64)
        self.tokens = 0
        self.aux = 0.0  # balance loss (summed over layers), averaged over the step's micro-batches by the trainer

    def __bool__(self) -> bool:
        return bool(self.layers)

    def reset(self) -> None:
        self.counts.zero_()
        self.tokens = 0
        self.aux = 0.0

    def update(self) -> None:
        """Add the expert choices of each layer's last forward."""
        for i, layer in enumerate(self.layers):
            chosen = layer.last_experts
            self.counts[i] += torch.bincount(chosen.flatten().cpu(), minlength=layer.num_experts).double()
        if self.layers:
            self.tokens += self.layers[0].last_experts.shape[0]

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            extra = torch.tensor([float(self.tokens), self.aux], dtype=torch.float64)
            flat = torch.cat([self.counts.flatten(), extra])
            dist.all_reduce(flat)
            self.counts.copy_(flat[:-2].view_as(self.counts))
            self.tokens, self.aux = int(flat[-2]), float(flat[-1])

    def layer_is(self) -> list[float]:
        """Imbalance score of each layer over the accumulated batch."""
        return [imbalance_score(c, self.groups, self.tokens) for c in self.counts]

    def metrics(self) -> dict[str, float | list[float]]:
        """moe_is (mean over layers), moe_is_max, moe_load_max_over_mean (busiest device / mean device load,
        mean over layers), moe_is_layers and moe_aux_loss."""
        if not self.layers or not self.tokens:
            return {}
        layer_is = self.layer_is()
        loads = torch.stack([device_loads(c, self.groups) for c in self.counts])  # (L, M)
        ratio = (loads.max(-1).values / loads.mean(-1).clamp_min(1e-12)).mean()
        return {"moe_is": sum(layer_is) / len(layer_is), "moe_is_max": max(layer_is),
                "moe_load_max_over_mean": float(ratio), "moe_is_layers": [round(v, 6) for v in layer_is],
                "moe_aux_loss": self.aux}


@torch.no_grad()
def update_router_bias(model: nn.Module, meter: LoadMeter, rate: float) -> None:
    """Auxiliary-loss-free balancing (DeepSeek-V3, arXiv 2412.19437, section 2.1.2).

    Steps: for each MoE layer with a selection bias, (1) compare each expert's load over the step with the
    mean load, then (2) move its bias by `rate` towards balance: b_e += rate * sign(mean - load_e).
    Use the all-reduced meter so every data-parallel rank makes the same update.
    """
    for layer, counts in zip(meter.layers, meter.counts):
        bias = layer.router.expert_bias
        if bias is None:
            continue
        counts = counts.to(bias.device, bias.dtype)
        bias.add_(rate * torch.sign(counts.mean() - counts))


def model_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the balance losses of every MoE layer's last training forward, or None without MoE layers."""
    losses = [m.aux_loss for _, m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def check_expert_count(path: Any, cfg: Any) -> None:
    """Refuse a checkpoint directory whose expert tensors hold another number of experts than its config says.

    Reads only the safetensors headers. Raises ValueError naming the layer, both counts and the fix.
    """
    from pathlib import Path

    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        if file.name in ("optimizer.safetensors", "rng.safetensors"):
            continue
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.router.weight"):
                    held = fh.get_slice(name).get_shape()[0]
                    if held != cfg.num_experts:
                        layer = name.split(".")[1]
                        raise ValueError(f"{file.name}: layer {layer} holds {held} experts ({name}) but config.json "
                                         f"says num_experts={cfg.num_experts}; the config and the weights belong to "
                                         "different models (fix num_experts in config.json or use the matching "
                                         "weights).")


# --- upcycling a dense checkpoint (sparse upcycling, arXiv 2212.05055) ---------------------------------------

def upcycle_state(cfg: Any, dense_state: dict[str, torch.Tensor], moe_cfg: Any, noise: float = 0.0,
                  router_std: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Turn a dense DuoMind state dict into a MoE / MoGE one (sparse upcycling, arXiv 2212.05055).

    Steps: (1) copy every tensor that is not an MLP weight; (2) for each MoE layer, stack N copies of the
    dense gate/up/down weights into the experts, optionally adding Gaussian noise of std `noise` times each
    weight's std so experts can diverge; (3) the router starts at std `router_std` (0: all experts equally
    likely) and, where the weights are not renormalised, the per-expert scale starts at N / K, so the sum of
    the chosen weights is exactly 1 at a zero router: with `noise=0` the upcycled model computes the dense
    model's function.

    Args:
        cfg: The dense `ModelConfig`.
        dense_state: Its state dict.
        moe_cfg: The target `ModelConfig` (mlp_type "moe" or "moge", same other sizes).
        noise: Relative std of the noise added to each expert copy.
        router_std: Std of the initial router weights.
        seed: Seed for noise and router.

    Returns:
        The MoE state dict (shared experts, if configured, start at zero so they add nothing).
    """
    g = torch.Generator().manual_seed(seed)
    n, k, d = moe_cfg.num_experts, moe_cfg.num_experts_per_tok, moe_cfg.hidden_size
    out: dict[str, torch.Tensor] = {}
    for name, tensor in dense_state.items():
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "mlp" and moe_cfg.is_moe_layer(int(parts[1])):
            continue
        out[name] = tensor
    for i in range(moe_cfg.num_hidden_layers):
        if not moe_cfg.is_moe_layer(i):
            continue
        pre = f"layers.{i}.mlp."
        gate, up, down = (dense_state[f"{pre}{p}_proj.weight"] for p in ("gate", "up", "down"))
        if moe_cfg.moe_intermediate_size != gate.shape[0]:
            raise ValueError(f"moe_intermediate_size={moe_cfg.moe_intermediate_size} differs from the dense MLP "
                             f"width {gate.shape[0]}; upcycling copies the dense MLP, so keep them equal.")
        if any(f"{pre}{p}_proj.bias" in dense_state for p in ("gate", "up", "down")):
            raise ValueError("the dense model has MLP biases (mlp_bias=True), which stacked experts do not hold.")
        gate_up = torch.cat([gate, up], dim=0)  # (2F, d)

        def copies(w: torch.Tensor) -> torch.Tensor:
            stacked = w.unsqueeze(0).repeat(n, *([1] * w.dim()))
            if noise:
                stacked = stacked + noise * w.float().std() * torch.randn(stacked.shape, generator=g).to(w.dtype)
            return stacked.contiguous()

        out[f"{pre}experts.gate_up_proj"] = copies(gate_up)
        out[f"{pre}experts.down_proj"] = copies(down)
        router = torch.randn(n, d, generator=g) * router_std if router_std else torch.zeros(n, d)
        out[f"{pre}router.weight"] = router.to(gate.dtype)
        if moe_cfg.router_scale:
            value = 1.0 if moe_cfg.norm_topk_prob else n / k
            out[f"{pre}router.expert_scale"] = torch.full((n,), value, dtype=gate.dtype)
        if moe_cfg.router_bias_update_rate > 0:
            out[f"{pre}router.expert_bias"] = torch.zeros(n, dtype=torch.float32)
        if moe_cfg.num_shared_experts:
            f = moe_cfg.num_shared_experts * moe_cfg.moe_intermediate_size
            for p, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
                # gate/up random, down zero: the shared MLP outputs 0 yet still gets gradients
                w = torch.randn(shape, generator=g) * 0.02 if p != "down" else torch.zeros(shape)
                out[f"{pre}shared.{p}_proj.weight"] = w.to(gate.dtype)
    return out
