"""Math correctness: extract the final answer, then decide equivalence with math-verify (sympy fallback).

A MARS source (arXiv 2505.22375: deterministic verifiers for math). `score` is pure: the same
response and answer always give the same result. Steps:

1. take the answer part of the response (after `</think>`), then its final answer: the last
   `\\boxed{}` / `\\fbox{}`, else an "Answer:" / "answer is" line, else the last math expression;
2. normalise both sides (dollar signs, `\\left`/`\\right`, `\\dfrac`, thousands separators, units,
   degrees, a trailing period);
3. fast paths decide most answers in microseconds: equal strings; exact rationals (percentages
   read both ways); numeric fingerprints of simple expressions, sets and intervals (`numeric`);
4. otherwise math-verify decides (fractions, decimals, percentages, sets, intervals, LaTeX,
   equations), and sympy is the fallback when math-verify cannot parse a side;
5. each check runs under a time limit (verdict `timeout`).

The time limit uses SIGALRM, so it applies in a process's main thread (the batch pool and the
service run checks there); elsewhere checks run without it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import threading
from dataclasses import dataclass
from fractions import Fraction

from duomind.rewards import numeric
from duomind.rewards.format import split_think

VERDICTS = ("ok", "wrong_answer", "no_answer", "timeout")
logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once that we do our own timeouts


@dataclass(frozen=True)
class MathResult:
    """Outcome of one math check: value 1.0 if equivalent, else 0.0."""

    value: float
    verdict: str
    extracted: str | None


def score(response: str, answer: str, timeout_s: float = 2.0) -> MathResult:
    """Score a response against a reference answer.

    Args:
        response: the model's full response (a think span, if any, is ignored).
        answer: the reference final answer (LaTeX or plain; `\\boxed{}` allowed).
        timeout_s: time limit for the equivalence check.

    Returns:
        `MathResult` with value 1.0 (equivalent) or 0.0, the verdict and the extracted answer.
    """
    pred = extract_answer(split_think(response)[1])
    if pred is None:
        return MathResult(0.0, "no_answer", None)
    gold = _last_boxed(answer) or answer  # a reference is its own answer, boxed or not
    try:
        with _time_limit(timeout_s):
            same = equivalent(pred, gold)
    except _CheckTimeout:
        return MathResult(0.0, "timeout", pred)
    except (RecursionError, MemoryError, ValueError, TypeError, ArithmeticError):
        # an answer the parsers choke on (e.g. thousands of nested brackets) is not equivalent, and
        # must not take the other records of its batch down with it
        return MathResult(0.0, "wrong_answer", pred)
    return MathResult(float(same), "ok" if same else "wrong_answer", pred)


# ----------------------------------------------------------------------------------------- extraction

_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_LATEX_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\.\d+%?")


def extract_answer(text: str) -> str | None:
    """The final answer in `text`: last `\\boxed{}`, else an "Answer:" line, else the last expression."""
    if "\\boxed" in text or "\\fbox" in text:  # an unclosed box means a cut-off answer: none
        boxed = _last_boxed(text)
        return boxed.strip() or None if boxed is not None else None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        found = list(_ANSWER_LINE.finditer(line))
        if found:
            return _clean_sentence(found[-1].group(1))
    spans = _LATEX_SPAN.findall(text)
    if spans:
        return next(s for s in spans[-1] if s).strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def _last_boxed(text: str) -> str | None:
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if max(boxed, fbox) < 0:
        return None
    i = boxed + len("\\boxed") if boxed > fbox else fbox + len("\\fbox")
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # `\boxed 5`
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j]
    return None  # unbalanced braces: no answer


def _clean_sentence(s: str) -> str:
    s = s.strip()
    m = _LATEX_SPAN.search(s)
    if m:  # "Answer: the value is $x = 3$." -> the math inside
        return next(g for g in m.groups() if g).strip()
    return s.rstrip(" .").strip("*").strip()


# ----------------------------------------------------------------------------------------- normalising

_UNIT_TEXT = re.compile(r"\\(?:text|mbox|mathrm|textbf|operatorname)\s*\{\s*([^{}]*)\}")
_TRAILING_WORDS = re.compile(r"^(-?[\d.,/]+%?)\s+(?:[A-Za-z]+\.?\s*){1,3}(?:\^?\d)?$")  # "2x" is no unit
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


@functools.lru_cache(maxsize=65536)
def normalize(s: str) -> str:
    """Canonical surface form: what math-verify and the fast paths see."""
    s = s.strip().strip("$").strip()
    for a, b in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("{,}", ","),
                 ("\\!", ""), ("\\,", ""), ("\\;", ""), ("^{\\circ}", ""), ("^\\circ", ""),
                 ("°", ""), ("\\$", ""), ("\\displaystyle", "")):
        s = s.replace(a, b)
    s = re.sub(r"(?<!\\)\\ ", " ", s)  # a spacing "\ ", not the row break "\\ "
    text = _UNIT_TEXT.fullmatch(s)
    if text:  # \text{(B)}, \text{yes}: the words themselves
        s = text.group(1).strip()
    else:  # 5\text{ cm}: a number with a unit -> the number
        s = re.sub(r"^(-?[\d.,/]+)\s*" + _UNIT_TEXT.pattern + r"(?:\^\d)?$", r"\1", s)
    s = s.strip().rstrip(".").strip()
    m = _TRAILING_WORDS.match(s)
    if m:  # "12 apples", "5 cm^2"
        s = m.group(1)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


_FRAC = re.compile(r"^(-?)\\frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}$|^(-?)\\frac(\d)(\d)$")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac(?:\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|(\d)(\d))$")
_PLAIN = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+)?$")


@functools.lru_cache(maxsize=65536)
def _exact_number(s: str) -> tuple[Fraction, bool] | None:
    """A plain number (integer, decimal, a/b, \\frac{a}{b}, optionally a percentage) as (Fraction, is_percent)."""
    percent = s.endswith("%")
    s = s.removesuffix("\\%").removesuffix("%").strip() if percent else s
    try:
        if _PLAIN.match(s):
            return Fraction(s.replace(" ", "")), percent
        m = _MIXED.match(s)
        if m:  # 2\\frac{1}{3} is two and a third
            whole, num, den = int(m.group(2)), int(m.group(3) or m.group(5)), int(m.group(4) or m.group(6))
            return (-1 if m.group(1) else 1) * (whole + Fraction(num, den)), percent
        m = _FRAC.match(s)
        if m:
            sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.group(2) else m.group(4, 5, 6)
            return (-1 if sign else 1) * Fraction(int(num), int(den)), percent
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _readings(n: tuple[Fraction, bool]) -> tuple[Fraction, ...]:
    # "50%" may be meant as 50 or as 0.5 (math-verify accepts both)
    return (n[0], n[0] / 100) if n[1] else (n[0],)


def _compare_numbers(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool | None:
    """True/False when exact arithmetic decides; None for near misses that rounding rules must judge."""
    pairs = [(x, y) for x in _readings(a) for y in _readings(b)]
    if any(x == y for x, y in pairs):
        return True
    if all(abs(x - y) > Fraction(1, 10_000) for x, y in pairs):
        return False
    return None


def _compare_values(p: str, g: str) -> bool | None:
    """Numeric fingerprints of simple expressions, sets and intervals (see `numeric`); None: undecided."""
    sp, sg = _structure(p), _structure(g)
    if sp is None or sg is None or sp[0] != sg[0] or len(sp[2]) != len(sg[2]):
        return None
    if {v[0] for v in sp[2]} != {v[0] for v in sg[2]}:
        return None  # other variables (x vs t, b vs B): math-verify's rules decide
    kind, vp, vg = sp[0], sp[2], sg[2]
    if sp[1] != sg[1]:  # (0, 1] and [0, 1]: other brackets, another interval
        same = False
    elif kind == "set":
        same = all(any(_same_value(x, y) for y in vg) for x in vp) and all(any(_same_value(y, x) for x in vp)
                                                                           for y in vg)
    else:
        same = all(_same_value(x, y) for x, y in zip(vp, vg))
    if same:
        return True
    return False if "." not in p + g else None  # decimals: math-verify's rounding rules decide


def _same_value(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(numeric.close(x, y) for x, y in zip(a[1], b[1]))


_INTERVAL = re.compile(r"^([\[(])(.*)([\])])$", re.DOTALL)


def _structure(s: str) -> tuple[str, str, list[tuple]] | None:
    """("expr", "", [value]), ("set", "", values) or ("interval", brackets, [lo, hi]); None if unsupported."""
    if s.startswith("\\{") and s.endswith("\\}"):
        parts = _split_top(s[2:-2])
        values = [_value(x) for x in parts] if parts else []
        return ("set", "", values) if all(v is not None for v in values) else None
    m = _INTERVAL.match(s)
    if m and "," in s:
        parts = _split_top(m.group(2))
        if parts is not None and len(parts) == 2:
            values = [_value(x) for x in parts]
            if all(v is not None for v in values):
                return "interval", m.group(1) + m.group(3), values
    v = _value(s)
    return ("expr", "", [v]) if v is not None else None


def _value(s: str) -> tuple | None:
    s = s.strip()
    if s in ("\\infty", "+\\infty", "-\\infty"):
        return ("inf", (-1.0 if s[0] == "-" else 1.0,))
    return numeric.value_of(s)


def _split_top(s: str) -> list[str] | None:
    """Split at commas outside brackets; None if brackets do not balance."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        if depth < 0:
            return None
    parts.append(s[start:])
    return [x for x in parts] if depth == 0 and all(x.strip() for x in parts) else None


_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?$")


def equivalent(pred: str, gold: str) -> bool:
    """Whether two final answers are mathematically equivalent (no time limit; see `score`)."""
    return _equivalent(normalize(pred), normalize(gold))


@functools.lru_cache(maxsize=65536)  # samples of one prompt often agree: decide each (answer, reference) once
def _equivalent(p: str, g: str) -> bool:
    if not p or not g:
        return False
    if p == g or p.lower() == g.lower():
        return True
    cp, cg = _CHOICE.match(p), _CHOICE.match(g)
    if cp or cg:  # multiple choice: letters must match, case-insensitively
        return bool(cp and cg and cp.group(1).upper() == cg.group(1).upper())
    a, b = _exact_number(p), _exact_number(g)
    decided = _compare_numbers(a, b) if a is not None and b is not None else _compare_values(p, g)
    if decided is not None:
        return decided
    gold_parsed, pred_parsed = _parse(g), _parse(p)
    if _parsed(gold_parsed) and _parsed(pred_parsed):
        return _verify(gold_parsed, pred_parsed)
    return _sympy_equal(p, g)


@functools.lru_cache(maxsize=16384)
def _parse(s: str) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = s if "\\boxed" in s else f"${s}$"
    return tuple(parse(text, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None))


def _parsed(items: tuple) -> bool:
    return any(not isinstance(x, str) for x in items)


def _verify(gold: tuple, pred: tuple) -> bool:
    from math_verify import verify

    return verify(list(gold), list(pred), timeout_seconds=None, allow_set_relation_comp=True)


# sympy's parse_expr runs `eval` on its input, and the response is untrusted: only plain arithmetic
# over single-letter variables and a few named functions may reach it (no quotes, underscores,
# attribute dots, brackets or keywords, so no way to name anything but these).
_SAFE_TOKEN = re.compile(r"\s*(?:([A-Za-z]+)|\d+(?:\.\d+)?|\.\d+|\*\*|[-+*/^(),])")
_SAFE_NAMES = frozenset({"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh",
                         "tanh", "log", "ln", "exp", "pi", "oo", "Abs", "abs", "factorial"})


def _safe_for_sympy(s: str) -> bool:
    """Whether `s` is plain arithmetic that sympy may `eval` (see `_SAFE_TOKEN`)."""
    if len(s) > 256:
        return False
    pos = 0
    while pos < len(s):
        m = _SAFE_TOKEN.match(s, pos)
        if not m or m.end() == pos:
            return s[pos:].strip() == ""
        name = m.group(1)
        if name is not None and len(name) > 1 and name not in _SAFE_NAMES:
            return False
        pos = m.end()
    return True


def _sympy_equal(p: str, g: str) -> bool:
    """Fallback for what math-verify cannot parse: plain-text expressions via sympy (see `_safe_for_sympy`)."""
    if not (_safe_for_sympy(p) and _safe_for_sympy(g)):
        return False
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    transforms = (*standard_transformations, implicit_multiplication_application, convert_xor)
    try:
        a, b = (parse_expr(x, transformations=transforms, evaluate=True) for x in (p, g))
        return bool(sympy.simplify(a - b) == 0)
    except Exception:  # noqa: BLE001 - unparsable text is simply not equivalent
        return False


# ----------------------------------------------------------------------------------------- time limit

class _CheckTimeout(BaseException):
    """Raised by the alarm; a BaseException so that math-verify's `except Exception` cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _CheckTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
