"""Which prompts an iteration trains on: the shortest correct teacher response, difficulty, balanced selection.

Pangu Embedded (arXiv 2505.22375) keeps the shortest correct teacher response (rejection sampling) and
selects data whose difficulty tracks the current student, a balanced mix working best. Design choices
(specs/pangu-embedded.md): difficulty = 1 - the student's pass rate over N samples; bins easy
(difficulty <= 1/3), medium, hard (>= 2/3); prompts the student always or never solves are dropped; the
mix leans to medium.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

EDGES = (1 / 3, 2 / 3)


def shortest_correct(responses: Sequence[str], correct: Sequence[bool], length=len) -> int | None:
    """Index of the shortest correct response (ties: the earliest), or None when none is correct."""
    best = None
    for i, (text, ok) in enumerate(zip(responses, correct)):
        if ok and (best is None or length(text) < length(responses[best])):
            best = i
    return best


def difficulty(passes: int, samples: int) -> float:
    """1 - pass rate: 0 for a prompt the student always solves, 1 for one it never solves."""
    if samples <= 0 or not 0 <= passes <= samples:
        raise ValueError(f"need 0 <= passes <= samples and samples > 0, got {passes}/{samples}.")
    return 1.0 - passes / samples


def bin_of(d: float) -> str:
    """Difficulty bin: easy (<= 1/3), medium, hard (>= 2/3)."""
    return "easy" if d <= EDGES[0] + 1e-9 else "hard" if d >= EDGES[1] - 1e-9 else "medium"


def select_balanced(difficulties: dict[str, float], size: int, mix: dict[str, float], seed: int = 0,
                    drop_solved: bool = True, drop_unsolved: bool = True) -> list[str]:
    """Pick up to `size` keys with bin shares as close to `mix` as the candidates allow.

    Steps: drop always-solved (difficulty 0) and never-solved (1) prompts; give each bin its quota,
    size * share, rounded so the quotas add up to `size`; take the quota from each bin at random (seeded);
    hand unused quota of short bins to the others, largest share first; return the keys in a seeded order.
    """
    rng = random.Random(seed)
    pool: dict[str, list[str]] = {"easy": [], "medium": [], "hard": []}
    for key in sorted(difficulties):
        d = difficulties[key]
        if (drop_solved and d <= 0.0) or (drop_unsolved and d >= 1.0):
            continue
        pool[bin_of(d)].append(key)
    for keys in pool.values():
        rng.shuffle(keys)
    total_share = sum(mix.get(b, 0.0) for b in pool)
    raw = {b: size * mix.get(b, 0.0) / total_share for b in pool}
    quota = {b: int(raw[b]) for b in pool}
    # largest remainders first, so the quotas sum to size exactly
    for b in sorted(pool, key=lambda b: raw[b] - quota[b], reverse=True)[:size - sum(quota.values())]:
        quota[b] += 1
    taken = {b: pool[b][:quota[b]] for b in pool}
    left = size - sum(len(v) for v in taken.values())
    for b in sorted(pool, key=lambda b: (-mix.get(b, 0.0), b)):
        if left <= 0:
            break
        extra = pool[b][len(taken[b]):len(taken[b]) + left]
        taken[b] += extra
        left -= len(extra)
    chosen = [k for b in pool for k in taken[b]]
    rng.shuffle(chosen)
    return chosen


def select_random(keys: Sequence[str], size: int, seed: int = 0) -> list[str]:
    """Up to `size` keys uniformly at random (seeded), regardless of difficulty."""
    keys = sorted(keys)
    return random.Random(seed).sample(keys, min(size, len(keys)))
