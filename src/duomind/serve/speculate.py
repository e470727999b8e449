"""Speculative steps inside the continuous-batching engine: FIRP (or any drafter) when a sequence runs alone.

`duomind.generate.speculative` verifies a drafted token tree in one forward pass for ONE sequence (FIRP,
arXiv 2410.20488: pseudo future states from an intermediate layer). In the engine that applies whenever a
single greedy sequence is running and nobody waits, which is when a batch has no other work to amortise
the weights over; as soon as another request arrives the engine returns to one token per sequence per
step, on the same cache. Mode rules stay exact: the tree is walked with the sequence's `ThinkingControl`
applied to every node's logits, so a drafted token is kept only if it is what the constrained greedy
choice would have been. Output therefore equals plain greedy decoding (tested).
"""

from __future__ import annotations

import torch

from duomind.generate.speculative import Draft, Sampling, _compact, _depths, ancestors, tree_forward


class SoloSpeculation:
    """Drives speculative steps of the engine's single running sequence with `drafter`."""

    def __init__(self, engine, drafter) -> None:
        self.engine, self.drafter = engine, drafter
        pseudo = drafter.pseudo
        self.spare = (drafter.max_nodes + 1) * (1 + (pseudo.k if pseudo else 0))
        self.current = None  # the sequence whose drafter state is fresh
        self.steps = self.drafted = self.accepted = 0

    def stats(self) -> dict:
        return {"drafter": type(self.drafter).__name__, "steps": self.steps, "drafted": self.drafted,
                "accepted": self.accepted}

    def ready(self) -> bool:
        """One greedy sequence alone, with room in the cache for a draft tree."""
        e = self.engine
        if len(e.running) != 1 or e.waiting or e.running[0].params.temperature > 0:
            self.current = None
            return False
        s = e.running[0]
        return e.cache.length - s.start + self.spare <= e.cache.max_len

    def step(self) -> None:
        e = self.engine
        s, cache, model = e.running[0], e.cache, e.model
        used = cache.length - s.start
        if s.start:  # the tree code expects the sequence to start at column 0
            cache.move_window(used, used)
            s.start = 0
        device = e.device
        pseudo = self.drafter.pseudo
        root = s.out[-1]
        if self.current is not s:  # fresh drafter state: a plain step that also yields FIRP's pseudo logits
            self.drafter.start(s.ids + s.out[:-1], Sampling(0.0))
            out = tree_forward(model, cache, torch.tensor([root], device=device), torch.tensor([used]),
                               torch.ones(1, 1, dtype=torch.bool), pseudo, [0])
            _compact(cache, used, [0])
            self.drafter.observe(out, 0)
            self.current = s
            self._walk(s, out.logits, [], [])
            self._finish(s)
            return
        draft = self.drafter.propose(s.ids + s.out)
        depth = _depths(draft.parents)
        room = s.params.max_tokens - len(s.out) - 1  # drafts past max_tokens would be thrown away
        if draft.tokens and max(depth) > room:
            keep = [i for i, d in enumerate(depth) if d <= room]
            remap = {old: n for n, old in enumerate(keep)}
            draft = Draft([draft.tokens[i] for i in keep],
                          [remap[draft.parents[i]] if draft.parents[i] >= 0 else -1 for i in keep])
            depth = [depth[i] for i in keep]
        parents = [-1] + [p + 1 for p in draft.parents]
        ids = torch.tensor([root] + draft.tokens, device=device)
        pos = torch.tensor([0] + depth, dtype=torch.long) + used
        out = tree_forward(model, cache, ids, pos, ancestors(parents), pseudo, range(len(parents)))
        path = self._walk(s, out.logits, draft.tokens, draft.parents)
        self.steps += 1
        self.drafted += len(draft.tokens)
        self.accepted += len(path)
        if not self._finish(s):
            rows = [0] + [i + 1 for i in path]  # the root and the accepted nodes stay in the cache
            _compact(cache, used, rows)
            self.drafter.observe(out, rows[-1])

    def _finish(self, s) -> bool:
        if s.finished:
            self.engine._drop([s])
            self.current = None
        return bool(s.finished)

    def _walk(self, s, logits: torch.Tensor, tokens: list[int], parents: list[int]) -> list[int]:
        """Greedy walk of the verified tree under the mode rules; emits every chosen token. Returns the path."""
        children: list[list[int]] = [[] for _ in range(len(tokens) + 1)]
        for i, p in enumerate(parents):
            children[p + 1].append(i)
        row, path = 0, []
        while True:
            lg = logits[row].float().clone()
            if s.control is not None:
                s.control.constrain(lg)
            best = int(lg.argmax())
            nxt = next((c for c in children[row] if tokens[c] == best), None)
            self.engine._advance(s, best)
            if s.finished or nxt is None:
                return path
            path.append(nxt)
            row = nxt + 1
