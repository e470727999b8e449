"""Train FIRP predictors and Medusa-style heads with the base model frozen, on its own hidden states.

Several predictor sets train together on one pass of the frozen base model per batch (the benchmark's
l/k sweep shares it). Targets are the base model's own outputs (self-distillation), since verification
compares drafts with them:

- FIRP (arXiv 2410.20488): MSE of W_j h_l(t) to the true h_l(t + j) (relative to the mean square of h_l)
  plus the cross-entropy of the pseudo state, refined by layers l+1..L exactly as at decode time
  (`speculative.pseudo_layout`: it sees the real context up to t and its own earlier pseudo states),
  against the base model's next-token distribution at t + j.
- Medusa (arXiv 2401.10774): the same cross-entropy for head j on the final hidden state at t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from duomind.generate.speculative import _masks, head, pseudo_layout, run_blocks
from duomind.model import DuoMind, KVCache


def token_windows(tok, corpus: str, seq_len: int) -> torch.Tensor:
    """(N, seq_len) windows of the packed corpus (the trainer's pre-training layout)."""
    from duomind.train.data import build_examples, read_records

    ex = build_examples(tok, read_records(corpus), "pretrain", seq_len)
    return torch.tensor(ex.inputs, dtype=torch.long)


class _Context:
    """The real positions' keys/values from the frozen base pass, as the cache the pseudo positions attend over.

    Real positions never see pseudo ones, so their keys/values in the FIRP layout equal the base pass's, and
    layers l+1..L need to run only the S * k pseudo positions, not T + S * k as well (at the benchmark's 16
    sources x 4 that is 64 positions instead of 192). Concatenation, not `KVCache.update`'s in-place write,
    so gradients flow to the pseudo states.
    """

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.length

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        n = self.cache.length
        return (torch.cat([self.cache.k[layer_idx, :, :, :n], k], 2),
                torch.cat([self.cache.v[layer_idx, :, :, :n], v], 2))


@torch.no_grad()
def base_pass(model: DuoMind, x: torch.Tensor) -> tuple:
    """(outputs with hidden states, KVCache of every layer's keys/values) of the frozen model on (B, T) tokens."""
    cache = KVCache(model.config, x.shape[0], x.shape[1], dtype=next(model.parameters()).dtype, device=x.device)
    return model(x, cache=cache, output_hidden_states=True), cache


def pseudo_logits(model: DuoMind, predictor, h_l: torch.Tensor, cache: KVCache, src: torch.Tensor | None = None,
                  k: int | None = None) -> torch.Tensor:
    """FIRP drafts from source positions `src` (S,) of (B, T) sequences: (B, S, k, V).

    h_l (B, T, d): the base model's states after `predictor.layer` blocks; cache: its keys/values from the
    same pass (`base_pass`). Uses the same attention layout as decoding, so a decoded step reproduces these
    logits. Pseudo states of different sources never see each other, so a subset of sources is an unbiased,
    cheaper batch.
    """
    B, T, d = h_l.shape
    k = k or predictor.k
    src = torch.arange(T) if src is None else src
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    full, fpos = pseudo_layout(causal, torch.arange(T), src.tolist(), k)
    masks = {w: m[:, :, T:] for w, m in _masks(model, 0, full, fpos, fpos, h_l.device).items()}  # pseudo rows
    h = predictor(h_l[:, src], k).reshape(B, len(src) * k, d)
    h = run_blocks(model, h, fpos[T:].to(h_l.device), masks, _Context(cache), predictor.layer, len(model.layers))
    return head(model, model.norm(h)).view(B, len(src), k, -1)


def _drafts(model: DuoMind, module, hidden: tuple, cache: KVCache, src: torch.Tensor) -> torch.Tensor:
    """(B, S, k, V) draft logits of a predictor set from the base model's hidden states and keys/values."""
    if module.kind == "firp":
        return pseudo_logits(model, module, hidden[module.layer], cache, src)
    return head(model, module(model.norm(hidden[-1][:, src])))


def _soft_ce(logits: torch.Tensor, target_logp: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, S, k, V) drafts against the base log-probs (B, T, V) at src + j, valid (s, j) only."""
    T = target_logp.shape[1]
    total, count = logits.new_zeros(()), 0
    for j in range(1, logits.shape[2] + 1):
        ok = src + j < T
        if not bool(ok.any()):
            break
        logp = F.log_softmax(logits[:, ok, j - 1].float(), -1)
        tgt = target_logp[:, src[ok] + j]
        total = total - (tgt.exp() * logp).sum()
        count += tgt.shape[0] * tgt.shape[1]
    return total / max(count, 1)


def losses(model: DuoMind, module, hidden: tuple, cache: KVCache, target_logp: torch.Tensor, src: torch.Tensor,
           mse_weight: float) -> dict:
    """Loss terms of one predictor set on one batch (hidden, cache: the base model's `base_pass`, no grad)."""
    out = {"ce": _soft_ce(_drafts(model, module, hidden, cache, src), target_logp, src)}
    if module.kind == "firp" and mse_weight:
        h = hidden[module.layer]
        T = h.shape[1]
        pred = module(h[:, src])  # (B, S, k, d)
        mse = []
        for j in range(1, module.k + 1):
            ok = src + j < T
            if bool(ok.any()):
                mse.append((pred[:, ok, j - 1] - h[:, src[ok] + j]).pow(2).mean())
        out["mse"] = torch.stack(mse).mean() / h.pow(2).mean()
    out["loss"] = out["ce"] + mse_weight * out.get("mse", 0.0)
    return out


@torch.no_grad()
def hit_rates(model: DuoMind, module, windows: torch.Tensor, width: int = 4, batch: int = 8) -> list[list[float]]:
    """[j][r]: how often the rank-r draft at depth j equals the base model's greedy token (held-out windows)."""
    hits = torch.zeros(module.k, width)
    count = torch.zeros(module.k)
    for i in range(0, len(windows), batch):
        out, cache = base_pass(model, windows[i:i + batch])
        greedy = out.logits.argmax(-1)  # (B, T)
        top = _drafts(model, module, out.hidden_states, cache, torch.arange(greedy.shape[1])).topk(width, -1).indices
        T = greedy.shape[1]
        for j in range(1, module.k + 1):
            if T - j <= 0:
                break
            match = top[:, : T - j, j - 1] == greedy[:, j:, None]
            hits[j - 1] += match.float().sum((0, 1))
            count[j - 1] += match.shape[0] * match.shape[1]
    return (hits / count.clamp_min(1)[:, None]).tolist()


def train_predictors(model: DuoMind, modules: list, windows: torch.Tensor, steps: int = 300, batch_size: int = 8,
                     sources: int = 32, lr: float = 2e-3, mse_weight: float = 1.0, seed: int = 0,
                     progress: bool = True) -> list[dict]:
    """Train predictor sets (FIRP and/or Medusa) on `windows` (N, T) with the base model frozen.

    Each step draws `batch_size` windows and `sources` positions per window to draft from (FIRP's upper-layer
    pass grows with them). Returns the last step's loss terms of each set. Cosine learning rate, short warmup.
    """
    from duomind.progress import progress_bar

    if len(windows) == 0:
        raise ValueError("no training windows; use a larger corpus or a shorter seq_len.")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 20)
    last: list[dict] = []
    with progress_bar("speculate train", steps, enabled=progress, unit="step") as advance:
        for step in range(steps):
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            for g in opt.param_groups:
                g["lr"] = lr * max(scale, 0.05)
            idx = torch.randint(0, len(windows), (batch_size,), generator=gen)
            out, cache = base_pass(model, windows[idx])
            target = F.log_softmax(out.logits.float(), -1)
            T = windows.shape[1]
            src = torch.randperm(T - 1, generator=gen)[: min(sources, T - 1)].sort().values
            total, last = 0.0, []
            for m in modules:
                terms = losses(model, m, out.hidden_states, cache, target, src, mse_weight)
                total = total + terms["loss"]
                last.append({k: float(v.detach()) for k, v in terms.items()})
            if not math.isfinite(float(total.detach())):
                raise FloatingPointError(f"predictor loss became {float(total.detach())} at step {step}; lower lr (now {lr}).")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            advance(1, info=" ".join(f"{m.kind}:{t['ce']:.2f}" for m, t in zip(modules, last)))
    for m in modules:
        m.eval()
    return last
