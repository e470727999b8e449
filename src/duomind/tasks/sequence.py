"""Sequence puzzles (`sequence`): give the next term of an arithmetic, geometric, Fibonacci-like,
alternating-difference or second-order pattern.

Parameters are chosen so that exactly one of these rules fits the shown terms (no zero steps, ratios
of at least 2, alternating differences that really differ), so the answer is unambiguous.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from duomind.tasks.record import Task

# Which patterns each level draws from, and how many terms it shows.
KINDS = (
    ("arithmetic",),
    ("arithmetic", "geometric"),
    ("arithmetic", "geometric", "fibonacci"),
    ("geometric", "fibonacci", "alternating"),
    ("fibonacci", "alternating", "second-order"),
)
SHOWN = (4, 5, 5, 6, 6)


def _signed(values: list[int]) -> str:
    return ", ".join(f"{v:+d}" for v in values)


def _diffs(terms: list[int]) -> list[int]:
    return [b - a for a, b in zip(terms, terms[1:])]


def _next(last: int, step: int) -> str:
    return f"{last} + {step} = {last + step}" if step >= 0 else f"{last} - {-step} = {last + step}"


def arithmetic(rng: random.Random, d: int, n: int) -> tuple[list[int], list[str]]:
    step = rng.randint(1, (5, 9, 15, 25, 50)[d - 1])
    if d > 1 and rng.random() < 0.4:
        step = -step
    start = rng.randint(1, 20 * d) + (max(0, -step) * n)  # a falling sequence stays positive
    terms = [start + step * i for i in range(n + 1)]
    return terms, [f"differences: {_signed(_diffs(terms[:n]))}", _next(terms[n - 1], step)]


def geometric(rng: random.Random, d: int, n: int) -> tuple[list[int], list[str]]:
    ratio, start = rng.randint(2, 3 if d < 4 else 4), rng.randint(1, 3 * d)
    terms = [start * ratio**i for i in range(n + 1)]
    ratios = ", ".join(str(ratio) for _ in range(n - 1))
    return terms, [f"ratios: {ratios}", f"{terms[n - 1]} * {ratio} = {terms[n]}"]


def fibonacci(rng: random.Random, d: int, n: int) -> tuple[list[int], list[str]]:
    terms = [rng.randint(1, 3 * d), rng.randint(1, 4 * d)]
    while len(terms) <= n:
        terms.append(terms[-1] + terms[-2])
    check = f"{terms[0]} + {terms[1]} = {terms[2]}"
    return terms, [
        f"each term is the sum of the two before: {check}",
        f"{terms[n - 2]} + {terms[n - 1]} = {terms[n]}",
    ]


def alternating(rng: random.Random, d: int, n: int) -> tuple[list[int], list[str]]:
    up = rng.randint(2, 5 * d)
    down = -rng.randint(1, up - 1)  # differences alternate +up, down; net growth keeps terms positive
    steps = [up, down] if rng.random() < 0.5 else [down, up]
    terms = [rng.randint(up, 10 * d)]
    for i in range(n):
        terms.append(terms[-1] + steps[i % 2])
    diffs = _diffs(terms[:n])
    return terms, [f"differences alternate: {_signed(diffs)}", _next(terms[n - 1], steps[(n - 1) % 2])]


def second_order(rng: random.Random, d: int, n: int) -> tuple[list[int], list[str]]:
    grow, first = rng.randint(1, d), rng.randint(1, 2 * d)
    diffs = [first + grow * i for i in range(n)]
    terms = [rng.randint(1, 10 * d)]
    for step in diffs:
        terms.append(terms[-1] + step)
    shown = diffs[: n - 1]
    return terms, [
        f"differences: {', '.join(map(str, shown))} grow by {grow}",
        f"next difference: {shown[-1]} + {grow} = {diffs[-1]}",
        _next(terms[n - 1], diffs[-1]),
    ]


# Each maker returns n + 1 terms (n shown, the last one is the answer) and the worked steps.
_MAKERS: dict[str, Callable[[random.Random, int, int], tuple[list[int], list[str]]]] = {
    "arithmetic": arithmetic,
    "geometric": geometric,
    "fibonacci": fibonacci,
    "alternating": alternating,
    "second-order": second_order,
}


def sequence(rng: random.Random, difficulty: int) -> Task:
    """Next term of a number pattern; higher levels use harder patterns, more terms, larger numbers."""
    n = SHOWN[difficulty - 1]
    terms, steps = _MAKERS[rng.choice(KINDS[difficulty - 1])](rng, difficulty, n)
    prompt = f"Find the next term: {', '.join(map(str, terms[:n]))}, ?"
    return Task("sequence", difficulty, prompt, str(terms[n]), tuple(steps))
