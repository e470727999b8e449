"""Speculative decoding: draft a token tree, verify it in one forward pass, keep the accepted path.

One loop serves every drafter (FIRP, Medusa-style heads, prompt lookup, a draft model; see
`duomind.generate.drafters`). A step feeds the last chosen token (the root) plus the drafted tree to the
model with a tree attention mask (each node sees the cache and its own ancestors), so all candidates are
scored at once. Verification walks the tree from the root:

- temperature 0: a child is accepted iff it is the argmax of its parent's logits, so the output equals
  plain greedy decoding token for token;
- sampling: the speculative rejection rule (Leviathan et al., arXiv 2211.17192; Chen et al., arXiv
  2302.01318): a child drawn from q is accepted with probability min(1, p/q), else p becomes
  norm(max(p - q, 0)). Deterministic candidates (q a point mass) make this "accept with p(c), else drop c
  and renormalise", which applied to distinct siblings in turn keeps p exact on trees too.

Then the first non-accepted token is drawn from the (residual) distribution, and the KV cache keeps the
root and the accepted nodes, moved together (`KVCache` rollback). FIRP (arXiv 2410.20488) adds pseudo
positions at an intermediate layer; `tree_forward` runs them through the upper layers in the same pass.
Batch 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from duomind.generate.sampling import probabilities
from duomind.model import DuoMind, KVCache


@dataclass
class Draft:
    """A drafted token tree. A parent precedes its children; `parents[i] == -1` hangs node i on the root.

    `q[i]` is the distribution (V,) node i was sampled from, or None for a deterministic candidate.
    """

    tokens: list[int]
    parents: list[int]
    q: list[torch.Tensor | None] | None = None


@dataclass
class Pseudo:
    """FIRP pseudo positions: `predict` maps layer-`layer` hidden states (S, d) to (S, k, d)."""

    layer: int
    k: int
    predict: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StepOutput:
    logits: torch.Tensor  # (N, V) of the kept real nodes
    hidden: torch.Tensor  # (N, d) final-norm hidden states of the same nodes
    pseudo_logits: torch.Tensor | None = None  # (S, k, V), one row per pseudo source


@dataclass
class Sampling:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities(logits[None], self.temperature, self.top_k, self.top_p)[0]


class Drafter(Protocol):
    """What the loop needs from a drafter (see `duomind.generate.drafters`)."""

    pseudo: Pseudo | None  # FIRP's pseudo positions, else None
    max_nodes: int  # most draft nodes per step

    def start(self, prompt: list[int], sampling: Sampling) -> None: ...
    def observe(self, out: StepOutput, row: int) -> None: ...  # outputs of the last accepted node (row)
    def propose(self, history: list[int]) -> Draft: ...


@dataclass
class Stats:
    """Counters over calls: verify steps, tokens, accepted drafts per depth."""

    steps: int = 0
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    depth_tried: list[int] = field(default_factory=list)
    depth_accepted: list[int] = field(default_factory=list)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens gained per verify step (accepted drafts + the one the model picks)."""
        return (self.accepted + self.steps) / self.steps if self.steps else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        """P(draft at depth d accepted | a draft of that depth was offered and its parent accepted)."""
        return [a / t if t else 0.0 for a, t in zip(self.depth_accepted, self.depth_tried)]

    def to_dict(self) -> dict:
        return {"steps": self.steps, "new_tokens": self.new_tokens, "drafted": self.drafted,
                "accepted": self.accepted, "mean_accepted_length": self.mean_accepted_length,
                "acceptance_per_position": self.acceptance_per_position}


def ancestors(parents: Sequence[int]) -> torch.Tensor:
    """(N, N) bool: entry [i, j] is True when j is i itself or one of its ancestors (parents[i] < i)."""
    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            if p >= i:
                raise ValueError(f"draft node {i} names parent {p}; a parent must come before its children.")
            anc[i] |= anc[p]
    return anc


def _masks(model: DuoMind, prefix: int, anc: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor,
           device) -> dict[int | None, torch.Tensor | None]:
    """Boolean (1, 1, T, prefix + T) masks per sliding window; None where SDPA needs no mask."""
    masks: dict[int | None, torch.Tensor | None] = {}
    T = anc.shape[0]
    for window in set(model.windows):
        if window is None and T == 1:
            masks[window] = None  # one query over every key
            continue
        if window is None and prefix == 0 and bool(torch.equal(anc, torch.ones(T, T, dtype=torch.bool).tril())):
            masks[window] = None  # plain causal prefill: the fused kernel
            continue
        m = torch.cat([torch.ones(T, prefix, dtype=torch.bool), anc], 1)
        if window is not None:
            m &= (qpos[:, None] - kpos[None, :]) < window
        masks[window] = m.to(device)[None, None]
    return masks


def pseudo_layout(anc: torch.Tensor, pos: torch.Tensor, src: Sequence[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestor matrix and positions of real nodes plus k pseudo positions per source node.

    Pseudo state j (1..k) of source s stands for the token j places after s: it sits at position
    pos[s] + j and sees what s sees plus s's pseudo states 1..j (FIRP, arXiv 2410.20488). Real nodes
    never see pseudo ones.
    """
    N, S = anc.shape[0], len(src)
    src_t = torch.as_tensor(list(src), dtype=torch.long)
    full = torch.zeros(N + S * k, N + S * k, dtype=torch.bool)
    full[:N, :N] = anc
    rows = N + torch.arange(S * k).view(S, k)  # (S, k) index of pseudo (s, j)
    full[rows.flatten(), :N] = anc[src_t].repeat_interleave(k, 0)
    own = torch.ones(k, k, dtype=torch.bool).tril()
    for i in range(S):
        full[rows[i, :, None], rows[i][None, :]] = own
    ppos = (pos[src_t][:, None] + torch.arange(1, k + 1)[None]).flatten()
    return full, torch.cat([pos, ppos])


def run_blocks(model: DuoMind, h: torch.Tensor, pos: torch.Tensor, masks: dict, cache, start: int, stop: int):
    """Blocks start..stop-1 over (B, T, d) states at positions pos (T,)."""
    cos_t, sin_t = model._rope_table(int(pos.max()) + 1, h.device)
    cos, sin = cos_t[pos].to(h.dtype)[None, None], sin_t[pos].to(h.dtype)[None, None]  # (1, 1, T, D)
    for i in range(start, stop):
        h = model.layers[i](h, cos, sin, masks[model.windows[i]], cache)
    return h


def head(model: DuoMind, h: torch.Tensor) -> torch.Tensor:
    """LM head (with final soft-capping) over final-norm states."""
    logits = model.lm_head(h)
    cap = model.config.final_softcap
    return torch.tanh(logits / cap) * cap if cap is not None else logits


def tree_forward(model: DuoMind, cache: KVCache, ids: torch.Tensor, pos: torch.Tensor, anc: torch.Tensor,
                 pseudo: Pseudo | None = None, src: Sequence[int] = (), keep: Sequence[int] | None = None
                 ) -> StepOutput:
    """One forward of N new nodes over the cache, with a tree mask and optional FIRP pseudo positions.

    Args:
        ids: (N,) tokens; pos: (N,) their positions; anc: (N, N) ancestor-or-self matrix.
        pseudo: inserts k pseudo states per node in `src` after `pseudo.layer` blocks.
        keep: real nodes whose logits are needed (None: all).

    Writes the nodes' keys/values at cache.length onward without advancing it (the caller keeps the
    accepted ones).
    """
    device = ids.device
    prefix = cache.length
    kpos = torch.cat([torch.arange(prefix), pos.cpu()])
    h = model.embed(ids[None])
    if model.embed_scale is not None:
        h = h * torch.tensor(model.embed_scale, dtype=h.dtype)
    L = len(model.layers)
    split = pseudo.layer if pseudo is not None else L
    h = run_blocks(model, h, pos.to(device), _masks(model, prefix, anc, pos.cpu(), kpos, device), cache, 0, split)
    N = ids.shape[0]
    pseudo_logits = None
    if pseudo is not None:
        src = list(src)
        full, fpos = pseudo_layout(anc, pos.cpu(), src, pseudo.k)
        extra = pseudo.predict(h[0, src])  # (S, k, d)
        h = torch.cat([h, extra.reshape(1, -1, h.shape[-1])], 1)
        fkpos = torch.cat([torch.arange(prefix), fpos])
        h = run_blocks(model, h, fpos.to(device), _masks(model, prefix, full, fpos, fkpos, device), cache, split, L)
        pseudo_logits = head(model, model.norm(h[0, N:])).view(len(src), pseudo.k, -1)
        h = h[:, :N]
    h = model.norm(h[0] if keep is None else h[0, list(keep)])
    return StepOutput(head(model, h), h, pseudo_logits)


def verify(logits: torch.Tensor, tokens: Sequence[int], parents: Sequence[int],
           q: Sequence[torch.Tensor | None] | None, sampling: Sampling) -> tuple[list[int], int]:
    """Walk a verified tree; return the accepted node indices (into `tokens`, root excluded) and the next token.

    `logits[0]` are the root's, `logits[i + 1]` those of draft node i (see the module docstring for the rule).
    """
    children: list[list[int]] = [[] for _ in range(len(tokens) + 1)]
    for i, p in enumerate(parents):
        children[p + 1].append(i)
    row, path = 0, []
    while True:
        kids = children[row]
        if sampling.temperature <= 0:
            best = int(logits[row].argmax())
            nxt = next((c for c in kids if tokens[c] == best), None)
            if nxt is None:
                return path, best
        else:
            p = sampling.probs(logits[row])
            nxt = None
            for c in kids:
                tok, qc = tokens[c], (q[c] if q is not None else None)
                accept = p[tok] if qc is None else torch.clamp(p[tok] / qc[tok], max=1.0)
                if float(torch.rand((), generator=sampling.generator)) < float(accept):
                    nxt = c
                    break
                residual = p.clone()
                if qc is None:
                    residual[tok] = 0.0
                else:
                    residual = (p - qc).clamp_min(0.0)
                total = residual.sum()
                p = residual / total if total > 0 else p
            if nxt is None:
                return path, int(torch.multinomial(p, 1, generator=sampling.generator))
        path.append(nxt)
        row = nxt + 1


def _compact(cache: KVCache, start: int, rows: list[int]) -> None:
    """Keep the cache entries start + rows (in order) as start, start + 1, ...; drop the rest."""
    if rows != list(range(len(rows))):
        idx = torch.as_tensor(rows, device=cache.k.device) + start
        cache.k[:, :, :, start:start + len(rows)] = cache.k[:, :, :, idx]
        cache.v[:, :, :, start:start + len(rows)] = cache.v[:, :, :, idx]
    cache.length = start + len(rows)


class NoDraft:
    """Drafts nothing: the loop degenerates to plain decoding (a reference for tests)."""

    pseudo = None
    max_nodes = 0

    def start(self, prompt, sampling):
        pass

    def observe(self, out, row):
        pass

    def propose(self, history):
        return Draft([], [])


def _depths(parents: Sequence[int]) -> list[int]:
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return depth


def _count(stats: Stats, parents: Sequence[int], path: list[int]) -> None:
    """Per-depth counters: depth d was tried when the accepted node at depth d - 1 had children."""
    has_kids = set(parents)
    depth = 0
    while (path[depth - 1] if depth else -1) in has_kids:
        if len(stats.depth_tried) <= depth:
            stats.depth_tried.append(0)
            stats.depth_accepted.append(0)
        stats.depth_tried[depth] += 1
        if depth == len(path):
            break
        stats.depth_accepted[depth] += 1
        depth += 1


@torch.inference_mode()
def speculative_generate(model: DuoMind, prompt_ids: Sequence[int], drafter: Drafter | None = None,
                         max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None, stop_tokens: Iterable[int] = (), seed: int | None = None,
                         stats: Stats | None = None) -> list[int]:
    """Generate up to `max_new_tokens` for one prompt with speculative decoding.

    Args:
        model: The target DuoMind model.
        prompt_ids: The prompt's token ids.
        drafter: A FIRP / Medusa / prompt-lookup / draft-model drafter (None: plain decoding).
        temperature, top_k, top_p: As in `duomind.generate.generate`; 0 is greedy (output == greedy).
        stop_tokens: Ids that end the output (included).
        seed: Sampling seed (private generator).
        stats: Optional `Stats` to accumulate acceptance counters into.

    Returns:
        The new tokens, stopping after the first stop token.
    """
    model.eval()
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("the prompt needs at least one token; got an empty prompt.")
    cfg = model.config
    if len(prompt) + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_position_embeddings={cfg.max_position_embeddings}; shorten one of them.")
    drafter = drafter or NoDraft()
    param = next(model.parameters())
    device = param.device
    sampling = Sampling(temperature, top_k, top_p,
                        torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None)
    stats = stats if stats is not None else Stats()
    stops = set(int(t) for t in stop_tokens)
    pseudo = drafter.pseudo
    spare = (drafter.max_nodes + 1) * (1 + (pseudo.k if pseudo else 0))
    cache = KVCache(cfg, 1, len(prompt) + max_new_tokens + spare, dtype=param.dtype, device=device)

    P = len(prompt)
    out = tree_forward(model, cache, torch.tensor(prompt, device=device), torch.arange(P),
                       torch.ones(P, P, dtype=torch.bool).tril(), pseudo, [P - 1], keep=[P - 1])
    cache.advance(P)
    drafter.start(prompt, sampling)
    drafter.observe(out, 0)
    _, token = verify(out.logits, [], [], None, sampling)
    new = [token]
    while len(new) < max_new_tokens and token not in stops:
        draft = drafter.propose(prompt + new)
        depth = _depths(draft.parents)
        room = max_new_tokens - len(new) - 1  # drafts beyond the budget would be thrown away
        if draft.tokens and max(depth) > room:
            keep_nodes = [i for i, d in enumerate(depth) if d <= room]
            remap = {old: n for n, old in enumerate(keep_nodes)}
            draft = Draft([draft.tokens[i] for i in keep_nodes],
                          [remap[draft.parents[i]] if draft.parents[i] >= 0 else -1 for i in keep_nodes],
                          [draft.q[i] for i in keep_nodes] if draft.q is not None else None)
            depth = [depth[i] for i in keep_nodes]
        parents = [-1] + [p + 1 for p in draft.parents]
        ids = torch.tensor([token] + draft.tokens, device=device)
        start = cache.length
        pos = torch.tensor([0] + depth, dtype=torch.long) + start
        out = tree_forward(model, cache, ids, pos, ancestors(parents), pseudo, range(len(parents)))
        path, token = verify(out.logits, draft.tokens, draft.parents, draft.q, sampling)
        rows = [0] + [i + 1 for i in path]
        _compact(cache, start, rows)
        drafter.observe(out, rows[-1])
        accepted = [draft.tokens[i] for i in path]
        new += accepted + [token]
        stats.steps += 1
        stats.drafted += len(draft.tokens)
        stats.accepted += len(accepted)
        _count(stats, draft.parents, path)
        if stops.intersection(accepted):
            break
    new = new[:max_new_tokens]
    for i, t in enumerate(new):
        if t in stops:
            new = new[: i + 1]
            break
    stats.new_tokens += len(new)
    return new
