"""Auto mode's choice as a calibrated threshold: think when the model's own P(`<think>`) reaches it.

In auto mode (Pangu Embedded, arXiv 2505.22375, Stage 2) the fused model's first token decides: `<think>`
opens a thinking span, anything else is the answer. Taken greedily, that choice sits wherever the fusion SFT
happened to leave the argmax, and it moves from one fusion run to the next (docs/reasoner.md). *(design)*:
read it as a classifier with score p = P(`<think>` | prompt) and pick its threshold on validation problems
that share no prompt with the training or held-out data: the highest threshold (least thinking) at which
auto keeps a chosen share of slow mode's accuracy, estimated from the model's greedy fast and slow answers.
On three fusion runs of the recipe (labels then sampled at temperature 0.7) it moved auto along the model's own
accuracy/tokens trade-off without improving it, and the estimate ran optimistic (docs/reasoner.md), so the
recipe leaves it off.

The threshold is a decode-time setting of a trained model: `router.json` beside its weights, read by
`duomind serve` / `duomind chat` (`ThinkingControl(think_threshold=...)`) and by evaluation (`generate_auto`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from duomind.tasks import Task

ROUTER_FILE = "router.json"


def check_threshold(value, where: str) -> float:
    """`value` as a think threshold: a probability in [0, 1], else a ValueError that names `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: a think threshold is a probability in [0, 1], got {value!r}.")
    return float(value)


@torch.inference_mode()
def first_step_logits(model, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, V) float32 next-token logits after each prompt (one left-padded forward pass)."""
    from duomind.generate.decode import left_pad

    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad)
    device = next(model.parameters()).device
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model.eval()(ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=1)
    return out.logits[:, -1].float()


def think_probs(model, prompts: Sequence[Sequence[int]], think: int, batch_size: int = 64) -> list[float]:
    """P(`<think>`) as each auto-mode prompt's first token."""
    probs: list[float] = []
    for s in range(0, len(prompts), batch_size):
        probs += torch.softmax(first_step_logits(model, prompts[s:s + batch_size]), -1)[:, think].tolist()
    return probs


def auto_first_tokens(logits: torch.Tensor, think: int, end_think: int, threshold: float) -> list[int]:
    """Auto's first token per row of (B, V) logits: `<think>` where its probability reaches `threshold`, else the
    most likely token that neither opens nor closes a span (what `ThinkingControl` lets greedy decoding pick)."""
    p = torch.softmax(logits.float(), -1)[:, think]
    answer = logits.clone()
    answer[:, [think, end_think]] = float("-inf")
    return torch.where(p >= threshold, torch.full_like(p, think, dtype=torch.long), answer.argmax(-1)).tolist()


def generate_auto(model, tok, prompts: Sequence[Sequence[int]], max_new_tokens: int, threshold: float,
                  stop_tokens: Iterable[int]) -> list[list[int]]:
    """Greedy auto-mode continuations whose first token follows `threshold` (see `auto_first_tokens`)."""
    from duomind.generate import generate
    from duomind.tokenizer import END_THINK, THINK, special_ids

    ids = special_ids(tok)
    return generate(model, prompts, max_new_tokens, stop_tokens=stop_tokens,
                    first_token=lambda logits: auto_first_tokens(logits, ids[THINK], ids[END_THINK], threshold))


def calibrate(p: Sequence[float], fast: Sequence[bool], slow: Sequence[bool], fast_tokens: Sequence[int],
              slow_tokens: Sequence[int], keep: float) -> dict:
    """The threshold at which auto thinks least while keeping `keep` x slow mode's accuracy on these problems.

    Auto's answer to a problem is estimated as the greedy fast answer when it does not think and the greedy slow
    one when it does. Thinking on the k problems of highest p gives an accuracy a(k) with a(n) = slow's. The
    chosen k is the smallest from which every larger k also keeps `keep` x slow's accuracy (a noisy small dip
    in a(k) can't pick a threshold below which the estimate falls short again); the threshold lies midway
    between the k-th and (k+1)-th highest p. Where slow mode solves none, there is nothing to keep: threshold 1.
    """
    n = len(p)
    if not n or not all(len(x) == n for x in (fast, slow, fast_tokens, slow_tokens)):
        raise ValueError("calibrate needs the same number (>= 1) of probabilities, fast and slow outcomes and tokens.")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must lie in (0, 1]: it is a share of slow mode's accuracy.")
    solved = sum(slow)
    order = sorted(range(n), key=lambda i: -p[i])
    acc = [sum(fast)]  # acc[k]: correct answers when the top-k problems think
    for i in order:
        acc.append(acc[-1] - fast[i] + slow[i])
    k = n
    while k > 0 and acc[k - 1] >= keep * solved:
        k -= 1
    ps = [p[i] for i in order]
    threshold = 1.0 if k == 0 else 0.0 if k == n else (ps[k - 1] + ps[k]) / 2
    think = [p[i] >= threshold for i in range(n)]
    tokens = sum(st if t else ft for t, ft, st in zip(think, fast_tokens, slow_tokens))
    return {"think_threshold": threshold, "keep": keep, "n": n, "fast_accuracy": sum(fast) / n,
            "slow_accuracy": solved / n, "accuracy_over_slow": acc[k] / solved if solved else 1.0, "think_share": k / n,
            "tokens_over_slow": tokens / max(sum(slow_tokens), 1)}


def validation_tasks(taken: Iterable[str], tasks: list[str], levels: list[int], n: int, seed: int) -> list[Task]:
    """Up to `n` problems generated with `seed` (pass another than the data's), none with a prompt in `taken`.

    Tasks with few distinct prompts (short sequences) give fewer new ones; the mix is recorded with the result."""
    from duomind.tasks.registry import iter_generate

    seen = set(taken)
    found: list[Task] = []
    for t in iter_generate(tasks, 20 * n, seed, levels):
        if t.prompt not in seen:
            seen.add(t.prompt)
            found.append(t)
            if len(found) == n:
                break
    return found


def read_threshold(path: str | Path) -> float | None:
    """The calibrated threshold in `path/router.json`, or None (auto then decides by its argmax)."""
    file = Path(path) / ROUTER_FILE
    if not file.is_file():
        return None
    return check_threshold(json.loads(file.read_text()).get("think_threshold"),
                           f"{file} (recalibrate with `duomind reasoner train`, or delete it to decide by argmax)")
