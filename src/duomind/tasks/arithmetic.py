"""Arithmetic generators: expressions (`arith`), long addition (`add`), long multiplication (`mul`)."""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass

from duomind.tasks.record import Task

_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class _Node:
    """An expression tree node; a leaf has no operator."""

    value: int
    op: str = ""
    left: _Node | None = None
    right: _Node | None = None


def _combine(rng: random.Random, a: _Node, b: _Node, cap: int) -> _Node:
    # Keep every intermediate value a non-negative integer no larger than `cap`, so each step is exact.
    ops = ["+", "-"]
    if a.value * b.value <= cap:
        ops.append("*")
    divisors = [k for k in range(2, 13) if a.value % k == 0 and a.value // k > 1] if not b.op else []
    if divisors:
        ops.append("/")
    op = rng.choice(ops)
    if op == "-" and a.value < b.value:
        a, b = b, a
    if op == "/":
        b = _Node(rng.choice(divisors))  # a leaf divisor keeps the division exact
    return _Node(_APPLY[op](a.value, b.value), op, a, b)


def _render(node: _Node, parent: int = 0, right: bool = False) -> str:
    if not node.op:
        return str(node.value)
    prec = _PRECEDENCE[node.op]
    text = f"{_render(node.left, prec)} {node.op} {_render(node.right, prec, True)}"
    # Brackets only where precedence or left-to-right order needs them.
    return f"({text})" if prec < parent or (right and prec == parent) else text


def _trace(node: _Node, steps: list[str]) -> None:
    if node.op:
        _trace(node.left, steps)
        _trace(node.right, steps)
        steps.append(f"{node.left.value} {node.op} {node.right.value} = {node.value}")


def arith(rng: random.Random, difficulty: int) -> Task:
    """Multi-step expression such as `(17 + 5) * 3 - 8`; level d has d + 1 operations."""
    hi = (9, 20, 50, 100, 200)[difficulty - 1]
    cap = (100, 400, 1000, 5000, 20000)[difficulty - 1]
    nodes = [_Node(rng.randint(1, hi)) for _ in range(difficulty + 2)]
    while len(nodes) > 1:  # merging random neighbours gives random bracketings
        i = rng.randrange(len(nodes) - 1)
        nodes[i : i + 2] = [_combine(rng, nodes[i], nodes[i + 1], cap)]
    steps: list[str] = []
    _trace(nodes[0], steps)
    return Task("arith", difficulty, f"What is {_render(nodes[0])}?", str(nodes[0].value), tuple(steps))


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(2 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def add(rng: random.Random, difficulty: int) -> Task:
    """Long addition worked column by column, ones first, with carries and the digits so far."""
    digits = (2, 3, 4, 6, 8)[difficulty - 1]
    a, b = _number(rng, digits), _number(rng, rng.randint(max(1, digits - 1), digits))
    xs, ys = str(a)[::-1], str(b)[::-1]
    width = len(xs)
    steps, carry, so_far = [], 0, ""
    for i in range(width):
        x, y = int(xs[i]), int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        last = i == width - 1
        so_far = (str(total) if last else str(total % 10)) + so_far
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        note = ", carry 1" if total >= 10 and not last else ""
        steps.append(f"{terms} = {total}{note}, so far {so_far}")
        carry = total // 10
    return Task("add", difficulty, f"What is {a} + {b}?", str(a + b), tuple(steps))


def _place_parts(n: int) -> list[int]:
    """Split by place value, ones first, skipping zeros: 4070 -> [70, 4000]."""
    s = str(n)[::-1]
    return [int(c) * 10**k for k, c in enumerate(s) if c != "0"]


def mul(rng: random.Random, difficulty: int) -> Task:
    """Long multiplication as partial products (one per digit of the multiplier) summed up."""
    da, db = ((2, 1), (3, 1), (3, 3), (4, 4), (6, 5))[difficulty - 1]
    a, b = _number(rng, da), _number(rng, db)
    if db == 1:  # a one-digit multiplier: split the other factor instead, so there is work to show
        pairs = [(p, b) for p in _place_parts(a)]
    else:
        pairs = [(a, p) for p in _place_parts(b)]
    steps = [f"{x} * {y} = {x * y}" for x, y in pairs]
    total = pairs[0][0] * pairs[0][1]
    for x, y in pairs[1:]:
        steps.append(f"{total} + {x * y} = {total + x * y}")
        total += x * y
    return Task("mul", difficulty, f"What is {a} * {b}?", str(a * b), tuple(steps))
