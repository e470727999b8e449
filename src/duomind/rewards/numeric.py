"""Fast numeric fingerprints of simple LaTeX answers, so most checks never reach the slow parsers.

math-verify parses LaTeX with an ANTLR grammar (~10 ms per new expression); answers in RL are
mostly numbers, fractions, radicals and small polynomials, which a tiny recursive-descent evaluator
handles in microseconds. `value_of` evaluates such an answer at fixed sample points of its
variables; anything outside the small grammar (relations, `\\infty`, functions, text, `e`, `i`)
returns None and the caller falls back to math-verify. Two answers with different values at a
sample point are different expressions; equal values at every point are taken as equal.

Grammar: expr := term (+|- term)*; term := factor ((*|/|implicit) factor)*;
factor := (+|-) factor | atom (^ factor)?; atom := number | letter | (expr) | {expr}
| \\frac{expr}{expr} | \\sqrt[n]{expr} | \\pi.
"""

from __future__ import annotations

import cmath
import functools
import re

_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|[a-zA-Z]|[-+*/^(){}\[\]])")
_POINTS = ((0.5772156649, 1.3247179572, 0.8414709848), (1.6180339887, 0.3678794412, 2.2360679775))
_NOT_VARIABLES = set("ei")  # Euler's number or the imaginary unit, or a variable: the slow path decides


class _Unsupported(Exception):
    pass


@functools.lru_cache(maxsize=65536)
def value_of(expr: str) -> tuple[tuple[str, ...], tuple[complex, ...]] | None:
    """(variables, values at each sample point) of a simple expression, or None outside the grammar."""
    tokens = _tokenize(expr)
    if tokens is None:
        return None
    names = sorted({t for t in tokens if len(t) == 1 and t.isalpha()})
    if len(names) > len(_POINTS[0]) or _NOT_VARIABLES & set(names):
        return None
    values = []
    for point in _POINTS:
        env = dict(zip(names, point))
        try:
            parser = _Parser(tokens, env)
            v = parser.expr()
            if parser.pos != len(parser.t):
                return None
        except (_Unsupported, ZeroDivisionError, OverflowError, ValueError, IndexError, RecursionError):
            return None
        values.append(complex(v))
    return tuple(names), tuple(values)


def _tokenize(s: str) -> list[str] | None:
    tokens, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    return tokens or None


def close(a: complex, b: complex) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


class _Parser:
    """Recursive descent over the token list, evaluating as it goes."""

    _ATOM_START = {"(", "{", "\\frac", "\\sqrt", "\\pi"}

    def __init__(self, tokens: list[str], env: dict[str, float]):
        self.t, self.pos, self.env = list(tokens), 0, env

    def peek(self) -> str | None:
        return self.t[self.pos] if self.pos < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _Unsupported(f"expected {want!r}, got {tok!r}")
        self.pos += 1
        return tok

    def expr(self) -> complex:
        v = self.term()
        while self.peek() in ("+", "-"):
            v = v + self.term() if self.take() == "+" else v - self.term()
        return v

    def term(self) -> complex:
        v = self.factor()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                v *= self.factor()
            elif tok == "/":
                self.take()
                v /= self.factor()
            elif tok is not None and (tok in self._ATOM_START or tok[0].isdigit() or tok[0] == "." or tok.isalpha()):
                if tok == "\\frac" and self.t[self.pos - 1][0].isdigit():
                    raise _Unsupported("2\\frac{1}{3}: a mixed number or a product")
                v *= self.factor()  # implicit multiplication: 2x, 3\sqrt{2}, (x+1)(x-1)
            else:
                return v

    def factor(self) -> complex:
        if self.peek() in ("+", "-"):
            return self.factor() if self.take() == "+" else -self.factor()
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.factor()
            if abs(exponent) > 64 or abs(base) > 1e12:
                raise _Unsupported("too large to evaluate safely")
            return base ** exponent
        return base

    def atom(self) -> complex:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return complex(float(tok))
        if len(tok) == 1 and tok.isalpha():
            return complex(self.env[tok])
        if tok in ("(", "{"):
            v = self.expr()
            self.take(")" if tok == "(" else "}")
            return v
        if tok == "\\pi":
            return complex(cmath.pi)
        if tok == "\\frac":
            num = self.group()
            return num / self.group()
        if tok == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take("[")
                index = self.expr().real
                self.take("]")
            return self.group() ** (1.0 / index)
        raise _Unsupported(tok)

    def group(self) -> complex:
        """A braced argument, or a single token as in \\frac12 or \\sqrt2."""
        if self.peek() == "{":
            self.take("{")
            v = self.expr()
            self.take("}")
            return v
        tok = self.take()
        if tok.isdigit():
            if len(tok) > 1:  # \frac12 is \frac{1}{2}: a bare argument is one digit
                self.t.insert(self.pos, tok[1:])
            return complex(float(tok[0]))
        if len(tok) == 1 and tok.isalpha():
            return complex(self.env[tok])
        raise _Unsupported(tok)
