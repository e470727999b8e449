"""Independent checkers for generated tasks, written for the tests (they share no code with the generators)."""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
EQUATION = re.compile(r"(-?\d+(?: [-+*/] -?\d+)+) = (-?\d+)")
INT = re.compile(r"-?\d+")


def safe_eval(expr: str) -> Fraction:
    """Evaluate + - * / over integer literals (and brackets) exactly; anything else is rejected."""

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"not plain arithmetic: {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval"))


def equations(step: str) -> list[tuple[str, int]]:
    """Every `a op b ... = c` in a step."""
    return [(lhs, int(rhs)) for lhs, rhs in EQUATION.findall(step)]


def check_equations(steps: tuple[str, ...]) -> list[int]:
    """Assert every equation in the steps is exactly right; return their results in order."""
    results = []
    for step in steps:
        for lhs, rhs in equations(step):
            assert safe_eval(lhs) == rhs, f"wrong step {step!r}"
            results.append(rhs)
    return results


def sequence_predictions(terms: list[int]) -> set[int]:
    """Next term under every classic rule that fits all the terms."""
    d = [b - a for a, b in zip(terms, terms[1:])]
    out = set()
    if len(set(d)) == 1:
        out.add(terms[-1] + d[0])
    pairs = list(zip(terms, terms[1:]))
    if 0 not in terms and all(b % a == 0 for a, b in pairs) and len({b // a for a, b in pairs}) == 1:
        out.add(terms[-1] * (terms[1] // terms[0]))
    if all(terms[i] == terms[i - 1] + terms[i - 2] for i in range(2, len(terms))):
        out.add(terms[-1] + terms[-2])
    if len(d) >= 3 and all(d[i] == d[i - 2] for i in range(2, len(d))):
        out.add(terms[-1] + d[-2])
    dd = [b - a for a, b in zip(d, d[1:])]
    if len(dd) >= 2 and len(set(dd)) == 1:
        out.add(terms[-1] + d[-1] + dd[0])
    return out


def run_code(source: str, tests: list[str]) -> int:
    """Run our own reference source and count passing asserts (only ever our generated code)."""
    passed = 0
    for test in tests:
        namespace: dict = {}
        exec(source, namespace)  # noqa: S102 - the tests' own reference solutions
        try:
            exec(test, namespace)  # noqa: S102
            passed += 1
        except AssertionError:
            pass
    return passed
