"""DuoMind's decode loop: one prefill, then one token per step on a pre-allocated KV cache.

Plain by design (gpt-fast is the anchor): no logits-processor stack, no per-step cache objects, positions
computed once. Sequences of different lengths are left-padded into one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from duomind.generate.sampling import sample
from duomind.model import DuoMind, KVCache

StreamFn = Callable[[int, int], None]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (B, P) ids and a (B, P) mask, padding on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token; got an empty prompt.")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: DuoMind,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] = (),
    stream: StreamFn | None = None,
    seed: int | None = None,
    first_token: Callable[[torch.Tensor], torch.Tensor | Sequence[int]] | None = None,
) -> list[list[int]]:
    """Generate continuations for a batch of token-id prompts.

    Args:
        model: A DuoMind model (eval mode is set here).
        prompts: Token ids per prompt; lengths may differ.
        max_new_tokens: Tokens to generate at most per prompt.
        temperature: 0 for greedy decoding; otherwise sampling temperature.
        top_k: Keep only the k most likely tokens when sampling.
        top_p: Nucleus sampling mass.
        stop_tokens: Token ids that end a sequence (included in its output).
        stream: Called as stream(row, token) for every new token as soon as it is chosen.
        seed: Seed for sampling (a private generator; global RNG untouched).
        first_token: Picks each row's first new token from the prefill's (B, V) logits instead of sampling
            (auto mode's calibrated think-or-answer choice, `duomind.reasoner.router`).

    Returns:
        The new tokens of each prompt, stopping after the first stop token.
    """
    model.eval()
    cfg = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad)
    B, P = ids.shape
    total = P + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_position_embeddings={cfg.max_position_embeddings}; shorten one of them.")
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = KVCache(cfg, B, total, dtype=dtype, device=device)
    padded = bool((mask == 0).any())
    full_mask = torch.ones((B, total), dtype=torch.long, device=device)
    full_mask[:, :P] = mask.to(device)
    ids = ids.to(device)
    positions = (full_mask[:, :P].cumsum(-1) - 1).clamp_min(0)
    logits = model(ids, attention_mask=full_mask[:, :P] if padded else None, position_ids=positions,
                   cache=cache, logits_to_keep=1).logits[:, -1]
    next_pos = positions[:, -1:] + 1
    out = torch.empty((B, max_new_tokens), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps = 0
    for t in range(max_new_tokens):
        if t == 0 and first_token is not None:
            token = torch.as_tensor(first_token(logits), dtype=torch.long, device=device).reshape(B)
        else:
            token = sample(logits, temperature, top_k, top_p, gen)
        out[:, t] = token
        steps = t + 1
        if stream is not None:
            for row in (~done).nonzero().flatten().tolist():
                stream(row, int(token[row]))
        if len(stops):
            done |= torch.isin(token, stops)
            if bool(done.all()):
                break
        if t == max_new_tokens - 1:
            break
        logits = model(token[:, None], attention_mask=full_mask[:, : P + t + 1] if padded else None,
                       position_ids=next_pos, cache=cache).logits[:, -1]
        next_pos = next_pos + 1
    result = []
    stop_set = set(stops.tolist())
    for row in out[:, :steps].tolist():
        for i, tok in enumerate(row):
            if tok in stop_set:
                row = row[: i + 1]
                break
        result.append(row)
    return result
