"""Drafters for `speculative_generate`: prompt lookup, a draft model, and the token tree shared by head drafters.

FIRP (`duomind.generate.firp`) and Medusa-style heads (`duomind.generate.medusa`) produce k next-token
distributions per step; `RankTree` turns them into a small token tree (top candidates per position).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from duomind.generate.speculative import Draft, Sampling, StepOutput
from duomind.model import DuoMind, KVCache


class RankTree:
    """A static tree of rank paths: (0, 1) = the top candidate at depth 1, then the 2nd at depth 2.

    The `budget` most likely paths are kept, scoring a path by the product of `hit[d][r]`, the measured (or
    assumed) chance that rank r at depth d is the right token. `width=1` gives a chain of length k.
    """

    def __init__(self, k: int, width: int = 1, budget: int | None = None,
                 hit: Sequence[Sequence[float]] | None = None) -> None:
        if k < 1 or width < 1:
            raise ValueError(f"a draft tree needs depth k >= 1 and width >= 1; got k={k}, width={width}.")
        budget = k if width == 1 else (budget or 4 * k)
        if hit is None:  # assumed: rank r right with 0.6 / (r + 1)^2, decaying with depth
            hit = [[0.6 * 0.85**d / (r + 1) ** 2 for r in range(width)] for d in range(k)]
        self.k, self.width = k, width
        paths: list[tuple[int, ...]] = []
        heap = [(-hit[0][r], (r,)) for r in range(width)]
        heapq.heapify(heap)
        while heap and len(paths) < budget:
            neg, path = heapq.heappop(heap)
            paths.append(path)
            if len(path) < k:
                for r in range(width):
                    heapq.heappush(heap, (neg * hit[len(path)][r], path + (r,)))
        # parents before children: sort by depth, then rank path
        self.paths = sorted(paths, key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(self.paths)}
        self.parents = [index[p[:-1]] if len(p) > 1 else -1 for p in self.paths]

    def draft(self, logits: torch.Tensor) -> Draft:
        """Candidates from k next-token logits (k, V): node (r1, .., rd) takes the rank-rd token at depth d."""
        top = logits[:, : logits.shape[-1]].topk(self.width, dim=-1).indices.tolist()  # (k, width)
        return Draft([top[len(p) - 1][p[-1]] for p in self.paths], list(self.parents))


class PromptLookup:
    """Prompt-lookup drafting: copy what followed the latest earlier occurrence of the trailing n-gram.

    No model; strong where the output repeats its input (arXiv 2304.04487, "LLMA"; Saxena's prompt lookup).
    """

    pseudo = None

    def __init__(self, k: int = 8, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if k < 1 or not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"prompt lookup needs k >= 1 and 1 <= min_ngram <= max_ngram; got k={k}, "
                             f"ngram {min_ngram}..{max_ngram}.")
        self.k, self.max_ngram, self.min_ngram = k, max_ngram, min_ngram
        self.max_nodes = k

    def start(self, prompt, sampling):
        pass

    def observe(self, out, row):
        pass

    def propose(self, history: list[int]) -> Draft:
        for n in range(min(self.max_ngram, len(history) - 1), self.min_ngram - 1, -1):
            tail = history[-n:]
            for s in range(len(history) - n - 1, -1, -1):  # latest earlier match first
                if history[s:s + n] == tail:
                    follow = history[s + n: s + n + self.k]
                    return Draft(follow, list(range(-1, len(follow) - 1)))
        return Draft([], [])


class DraftModel:
    """A small model drafts k tokens one by one (its own KV cache, rolled back to the agreed prefix).

    With sampling the drafts are drawn from the draft model's distribution q (same temperature / top-k /
    top-p), which the rejection rule needs (arXiv 2211.17192).
    """

    pseudo = None

    def __init__(self, draft: DuoMind, k: int = 4) -> None:
        if k < 1:
            raise ValueError(f"draft length k must be >= 1; got {k}.")
        self.model, self.k, self.max_nodes = draft.eval(), k, k
        self.cache: KVCache | None = None
        self.seen: list[int] = []

    def start(self, prompt: list[int], sampling: Sampling) -> None:
        param = next(self.model.parameters())
        size = min(self.model.config.max_position_embeddings, 4096)
        self.cache = KVCache(self.model.config, 1, size, dtype=param.dtype, device=param.device)
        self.seen, self.sampling = [], sampling

    def observe(self, out: StepOutput, row: int) -> None:
        pass

    def propose(self, history: list[int]) -> Draft:
        if len(history) + self.k > self.cache.max_len:
            return Draft([], [])
        agree = 0
        for a, b in zip(self.seen, history):
            if a != b:
                break
            agree += 1
        agree = min(agree, len(history) - 1)  # always feed at least the last token
        self.cache.truncate(agree)
        device = self.cache.k.device
        feed = history[agree:]
        tokens, qs = [], []
        for _ in range(self.k):
            logits = self.model(torch.tensor([feed], device=device), cache=self.cache, logits_to_keep=1).logits[0, -1]
            if self.sampling.temperature <= 0:
                tok, q = int(logits.argmax()), None
            else:
                q = self.sampling.probs(logits)
                tok = int(torch.multinomial(q, 1, generator=self.sampling.generator))
            tokens.append(tok)
            qs.append(q)
            feed = [tok]
        self.seen = history + tokens[:-1]
        return Draft(tokens, list(range(-1, self.k - 1)), qs if self.sampling.temperature > 0 else None)


def _check_k(k: int | None, trained: int, what: str) -> int:
    k = trained if k is None else k
    if not isinstance(k, int) or not 1 <= k <= trained:
        raise ValueError(f"k={k!r} is out of range for {what} trained with k={trained}; use 1 <= k <= {trained} "
                         "(or train more positions).")
    return k


class FIRPDrafter:
    """FIRP drafting (arXiv 2410.20488): pseudo future states at layer l, refined by the upper layers.

    The loop passes every verified node's layer-l state through the predictor, so whichever node ends up
    accepted already has its k drafts for the next step, computed in the same forward pass.
    """

    def __init__(self, model: DuoMind, predictor, k: int | None = None, width: int = 1, budget: int | None = None,
                 hit: Sequence[Sequence[float]] | None = None) -> None:
        from duomind.generate.speculative import Pseudo

        k = _check_k(k, predictor.k, "FIRP predictors")
        self.tree = RankTree(k, width, budget, hit)
        self.max_nodes = len(self.tree.paths)
        self.pseudo = Pseudo(predictor.layer, k, lambda h: predictor(h, k))
        self.logits: torch.Tensor | None = None

    def start(self, prompt, sampling):
        self.logits = None

    def observe(self, out: StepOutput, row: int) -> None:
        self.logits = out.pseudo_logits[row]

    def propose(self, history: list[int]) -> Draft:
        return self.tree.draft(self.logits)


class MedusaDrafter:
    """Medusa-style heads (arXiv 2401.10774) on the last accepted node's final hidden state."""

    pseudo = None

    def __init__(self, model: DuoMind, heads, k: int | None = None, width: int = 1, budget: int | None = None,
                 hit: Sequence[Sequence[float]] | None = None) -> None:
        self.k = _check_k(k, heads.k, "Medusa heads")
        self.model, self.heads = model, heads
        self.tree = RankTree(self.k, width, budget, hit)
        self.max_nodes = len(self.tree.paths)

    def start(self, prompt, sampling):
        self.logits = None

    def observe(self, out: StepOutput, row: int) -> None:
        from duomind.generate.speculative import head

        self.logits = head(self.model, self.heads(out.hidden[row], self.k))  # (k, V)

    def propose(self, history: list[int]) -> Draft:
        return self.tree.draft(self.logits)


def predictor_drafter(model: DuoMind, path, k: int | None = None, width: int = 1, budget: int | None = None):
    """Load predictors saved beside a checkpoint and wrap them as a drafter (FIRP or Medusa, from drafter.json).

    The tree's rank weights default to the top-r hit rates measured after training (drafter.json `hit`).
    """
    from duomind.generate.predictors import load_predictors

    module, meta = load_predictors(path, model)
    hit = meta.get("hit")
    if hit is not None:
        kk = _check_k(k, module.k, f"{meta['kind']} predictors")
        if width > len(hit[0]):
            hit = None  # measured for fewer ranks than asked: fall back to the assumed decay
        else:
            hit = [row[:width] for row in hit[:kk]]
    cls = FIRPDrafter if meta["kind"] == "firp" else MedusaDrafter
    return cls(model, module, k=k, width=width, budget=budget, hit=hit)
