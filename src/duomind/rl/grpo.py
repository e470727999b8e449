"""GRPO (group relative policy optimisation) with staleness-aware importance ratios.

Pangu Embedded (arXiv 2505.22375) trains its reasoner with RL under MARS rewards; the objective here is
GRPO (DeepSeekMath, arXiv 2402.03300) as the stale-synchronous scheduler needs it:

1. G responses per prompt form a group; the advantage of response i is r_i - mean(r), divided by
   std(r) + eps when `scale_std` (responses whose reward failed are left out of both);
2. every response token carries the log-probability the BEHAVIOUR policy gave it when it was sampled
   (policy version v_gen, recorded by the rollout worker); the ratio pi_theta / pi_{v_gen} therefore
   corrects samples that are up to s versions stale instead of treating them as on-policy;
3. the PPO clipped surrogate min(rho A, clip(rho, 1 - eps, 1 + eps) A) per token, optionally minus
   beta * KL(pi_theta || pi_ref) (the k3 estimator), averaged over ALL tokens of the batch
   (token-level aggregation: a long response weighs by its length, DAPO arXiv 2503.14476);
4. logged: mean token entropy, clip fraction (tokens whose clipped side was taken), KL, mean ratio.

Log-probabilities are of the sampling distribution softmax(logits / temperature).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Sample:
    """One response of a group, as the learner consumes it.

    Attributes:
        prompt_ids: Prompt tokens.
        response_ids: Sampled tokens (stop token included).
        logprobs: Behaviour-policy log-probability of each response token (len == len(response_ids)).
        version: Policy version that generated it (v_gen).
        reward: Scalar reward; None when scoring failed (the sample is then left out of the loss).
        correct: Whether the answer was right (None when unknown).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    version: int
    reward: float | None = None
    correct: bool | None = None


def group_advantages(rewards: Sequence[float | None], scale_std: bool = True, eps: float = 1e-4) -> list[float]:
    """Group-relative advantages; failed (None) rewards get 0 and do not enter mean or std."""
    ok = [r for r in rewards if r is not None]
    if not ok:
        return [0.0] * len(rewards)
    mean = sum(ok) / len(ok)
    std = (sum((r - mean) ** 2 for r in ok) / len(ok)) ** 0.5
    scale = (std + eps) if scale_std else 1.0
    return [0.0 if r is None else (r - mean) / scale for r in rewards]


def pack(samples: Sequence[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad prompt+response rows into ids (N, T), a response mask (N, T-1) over predicted positions,
    and the behaviour log-probs (N, T-1) aligned to it. Right padding needs no attention mask: causal
    attention never lets a real token see the padding after it."""
    rows = [s.prompt_ids + s.response_ids for s in samples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    old = torch.zeros((len(rows), width - 1))
    for i, (s, row) in enumerate(zip(samples, rows)):
        ids[i, :len(row)] = torch.tensor(row)
        p, n = len(s.prompt_ids), len(s.response_ids)
        mask[i, p - 1:p - 1 + n] = True  # position t predicts token t + 1
        old[i, p - 1:p - 1 + n] = torch.tensor(s.logprobs, dtype=torch.float32)
    return ids, mask, old


def token_logprobs(model, ids: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability (N, T-1) of each next token under softmax(logits / temperature), and optionally the
    entropy of that distribution at each position."""
    logits = model(ids).logits[:, :-1].float() / temperature  # (N, T-1, V)
    logp = F.log_softmax(logits, dim=-1)
    taken = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return taken, entropy


@torch.no_grad()
def behaviour_logprobs(model, prompt: Sequence[int], responses: Sequence[Sequence[int]], pad_id: int,
                       temperature: float) -> list[list[float]]:
    """What the rollout worker records: per-token log-probs of its own samples under the weights that drew them."""
    samples = [Sample(list(prompt), list(r), [0.0] * len(r), 0) for r in responses if r]
    rows = iter(())
    if samples:
        ids, mask, _ = pack(samples, pad_id)
        lp, _ = token_logprobs(model, ids, temperature)
        rows = iter([lp[i][mask[i]].tolist() for i in range(len(samples))])
    return [next(rows) if r else [] for r in responses]


def grpo_loss(model, samples: Sequence[Sample], advantages: Sequence[float], pad_id: int, clip_eps: float = 0.2,
              temperature: float = 1.0, kl_coef: float = 0.0, ref_model=None) -> tuple[torch.Tensor, dict]:
    """Token-level clipped GRPO loss of one batch; returns (loss, metrics). Samples with a failed reward
    or an empty response are skipped (their advantage is meaningless)."""
    keep = [i for i, s in enumerate(samples) if s.reward is not None and s.response_ids]
    if not keep:
        raise ValueError("no sample in the batch has a reward and a response; nothing to learn from.")
    batch = [samples[i] for i in keep]
    adv = torch.tensor([advantages[i] for i in keep], dtype=torch.float32)[:, None]
    ids, mask, old = pack(batch, pad_id)
    new, entropy = token_logprobs(model, ids, temperature, with_entropy=True)
    ratio = torch.exp(new - old)
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    per_token = -surrogate
    n = mask.sum()
    kl = torch.zeros(())
    if kl_coef and ref_model is not None:
        with torch.no_grad():
            ref, _ = token_logprobs(ref_model, ids, temperature)
        log_r = ref - new
        kl_tok = torch.exp(log_r) - log_r - 1  # k3: unbiased, always >= 0
        per_token = per_token + kl_coef * kl_tok
        kl = (kl_tok * mask).sum() / n
    loss = (per_token * mask).sum() / n
    with torch.no_grad():
        took_clip = ((ratio * adv) > (clipped * adv)) & mask
        metrics = {"loss": float(loss), "entropy": float((entropy * mask).sum() / n),
                   "clip_fraction": float(took_clip.sum() / n), "kl": float(kl),
                   "ratio_mean": float((ratio * mask).sum() / n), "tokens": int(n)}
    return loss, metrics
