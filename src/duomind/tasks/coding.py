"""Python function-writing tasks (`code`): a one-line spec, a reference solution and `assert` tests.

Each family builds its expected outputs with plain Python here, never by running the reference
source: solutions (ours or a model's) are only ever executed by the sandbox in
`duomind.rewards.sandbox`. The test suite runs our reference sources against their tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

from duomind.tasks.record import Task


class Spec(NamedTuple):
    """What a family produces: the function's name, a spec sentence, source, plan and expected behaviour."""

    name: str
    what: str
    body: str  # the source after the `def` line, indented
    args: str
    steps: tuple[str, ...]
    fn: Callable[..., Any]
    inputs: list[tuple[Any, ...]]


def _ints(rng: random.Random, k: int, lo: int = -9, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _word(rng: random.Random, k: int, letters: str = "abcde") -> str:
    return "".join(rng.choice(letters) for _ in range(k))


def linear(rng: random.Random, d: int, cases: int) -> Spec:
    a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 9)
    expr, fn = [
        (f"x + {b}", lambda x: x + b),
        (f"{a} * x + {b}", lambda x: a * x + b),
        (f"{a} * x * x - {b} * x + {c}", lambda x: a * x * x - b * x + c),
    ][d - 1]
    return Spec(
        "f",
        f"returns {expr}",
        f"    return {expr}",
        "x",
        (f"return {expr}",),
        fn,
        [(x,) for x in _ints(rng, cases)],
    )


def scale(rng: random.Random, d: int, cases: int) -> Spec:
    k, c = rng.randint(2, 9), rng.randint(1, 9)
    what, expr, steps, fn = [
        (
            f"each x in xs times {k}",
            f"x * {k} for x in xs",
            (f"map x to x * {k}",),
            lambda xs: [x * k for x in xs],
        ),
        (
            f"each x in xs times {k} plus {c}",
            f"x * {k} + {c} for x in xs",
            (f"map x to x * {k} + {c}",),
            lambda xs: [x * k + c for x in xs],
        ),
        (
            f"x * {k} for each positive x in xs",
            f"x * {k} for x in xs if x > 0",
            ("keep x when x > 0", f"map it to x * {k}"),
            lambda xs: [x * k for x in xs if x > 0],
        ),
    ][d - 1]
    inputs = [(_ints(rng, rng.randint(1, 2 + d)),) for _ in range(cases)]
    return Spec("scale", f"returns a list of {what}", f"    return [{expr}]", "xs", steps, fn, inputs)


def _spread(xs: list[int]) -> int:
    return max(xs) - min(xs)


def _argmax(xs: list[int]) -> int:
    return xs.index(max(xs))


def extremes(rng: random.Random, d: int, cases: int) -> Spec:
    if d == 1:
        name, expr, fn = rng.choice([("largest", "max", max), ("smallest", "min", min)])
        what, body, steps = f"the {name} number", f"{expr}(xs)", (f"take the {expr}imum",)
    elif d == 2:
        name, what, body, fn = "spread", "the largest minus the smallest number", "max(xs) - min(xs)", _spread
        steps = ("max minus min",)
    else:
        name, what, body, fn = (
            "argmax",
            "the index of the largest number (the first if tied)",
            "xs.index(max(xs))",
            _argmax,
        )
        steps = ("take the maximum", "return its first index")
    inputs = [(_ints(rng, rng.randint(2, 3 + d)),) for _ in range(cases)]
    return Spec(name, f"returns {what} in xs", f"    return {body}", "xs", steps, fn, inputs)


def clamp(rng: random.Random, d: int, cases: int) -> Spec:
    lo = rng.randint(-5, 5)
    hi = lo + rng.randint(2, 10)
    steps = (f"below {lo} gives {lo}", f"above {hi} gives {hi}")
    inputs = [(x,) for x in _ints(rng, cases, lo - 5, hi + 5)] + [(lo - 1,), (hi + 1,)]

    def fn(x: int) -> int:
        return min(max(x, lo), hi)

    return Spec(
        "clamp",
        f"returns x limited to {lo}..{hi}",
        f"    return min(max(x, {lo}), {hi})",
        "x",
        steps,
        fn,
        inputs,
    )


def filter_sum(rng: random.Random, d: int, cases: int) -> Spec:
    k = rng.choice((3, 5))  # odd, so "odd and divisible by k" has solutions
    parity = [("even", "x % 2 == 0", lambda x: x % 2 == 0), ("odd", "x % 2 == 1", lambda x: x % 2 == 1)]
    other = [
        (f"greater than {k}", f"x > {k}", lambda x: x > k),
        (f"divisible by {k}", f"x % {k} == 0", lambda x: x % k == 0),
    ]
    # Level 5 pairs a parity test with a compatible second test (never "even and odd").
    picked = [rng.choice(parity), rng.choice(other)] if d == 5 else [rng.choice(parity + other)]
    what = " and ".join(p[0] for p in picked)
    test = " and ".join(p[1] for p in picked)

    def fn(xs: list[int]) -> int:
        return sum(x for x in xs if all(p[2](x) for p in picked))

    hits = [x for x in range(-9, 21) if all(p[2](x) for p in picked)]
    inputs = []
    for i in range(cases):
        xs = _ints(rng, rng.randint(1, 1 + d))
        if i % 2 == 0:  # a list with a number to keep, so a solution returning 0 fails
            xs.insert(rng.randint(0, len(xs)), rng.choice(hits))
        inputs.append((xs,))
    steps = (f"keep x when {test}", "add up the kept numbers")
    return Spec(
        "total",
        f"returns the sum of the numbers in xs that are {what}",
        f"    return sum(x for x in xs if {test})",
        "xs",
        steps,
        fn,
        inputs,
    )


def count_chars(rng: random.Random, d: int, cases: int) -> Spec:
    ch = rng.choice("abcde")
    what, body, steps, fn = [
        (
            f"how many times '{ch}' appears in s",
            f"    return s.count('{ch}')",
            (f"count '{ch}' in s",),
            lambda s: s.count(ch),
        ),
        (
            "how many vowels (aeiou) s has",
            "    return sum(c in 'aeiou' for c in s)",
            ("check each character against 'aeiou'", "count the matches"),
            lambda s: sum(c in "aeiou" for c in s),
        ),
        (
            "how many characters of s are digits",
            "    return sum(c.isdigit() for c in s)",
            ("check each character with isdigit", "count the matches"),
            lambda s: sum(c.isdigit() for c in s),
        ),
    ][d - 3]
    letters, hit = [("abcde", ch), ("abcdefghijklmnopqrstuvwxyz", "aeiou"), ("ab19x7", "0123456789")][d - 3]
    inputs = []
    for i in range(cases):
        s = _word(rng, rng.randint(0, 7), letters)
        if i % 2 == 0:  # at least one match, so a solution returning 0 fails
            j = rng.randint(0, len(s))
            s = s[:j] + rng.choice(hit) + s[j:]
        inputs.append((s,))
    return Spec("count", f"returns {what}", body, "s", steps, fn, inputs)


def digits(rng: random.Random, d: int, cases: int) -> Spec:
    name, what, body, steps, fn = [
        (
            "digit_sum",
            "the sum of the digits of n (n >= 0)",
            "    return sum(int(c) for c in str(n))",
            ("go through the digits of str(n)", "add them up"),
            lambda n: sum(int(c) for c in str(n)),
        ),
        (
            "even_digits",
            "how many digits of n (n >= 0) are even",
            "    return sum(int(c) % 2 == 0 for c in str(n))",
            ("go through the digits of str(n)", "count the even ones"),
            lambda n: sum(int(c) % 2 == 0 for c in str(n)),
        ),
        (
            "reverse",
            "n with its digits reversed (n >= 0)",
            "    return int(str(n)[::-1])",
            ("reverse the string str(n)", "turn it back into an int"),
            lambda n: int(str(n)[::-1]),
        ),
    ][d - 3]
    inputs = [(rng.randint(0, 10 ** rng.randint(1, 2 + d)),) for _ in range(cases)]
    return Spec(name, f"returns {what}", body, "n", steps, fn, inputs)


def palindrome(rng: random.Random, d: int, cases: int) -> Spec:
    what, body, fn = [
        ("s reads the same backwards", "    return s == s[::-1]", lambda s: s == s[::-1]),
        (
            "s reads the same backwards, ignoring case",
            "    t = s.lower()\n    return t == t[::-1]",
            lambda s: s.lower() == s.lower()[::-1],
        ),
        (
            "s reads the same backwards, ignoring case and spaces",
            "    t = s.lower().replace(' ', '')\n    return t == t[::-1]",
            lambda s: (t := s.lower().replace(" ", "")) == t[::-1],
        ),
    ][d - 3]
    letters = "abc" if d == 3 else "abcAB" if d == 4 else "abAB "
    inputs = []
    for i in range(cases):  # half are built as palindromes, so both outcomes get tested
        half = _word(rng, rng.randint(1, 3), letters)
        s = half + rng.choice(["", "a"]) + half[::-1]
        while i % 2 == 1 and fn(s):
            s = _word(rng, rng.randint(2, 5), letters)
        if d > 3 and i % 2 == 0:
            s = "".join(c.swapcase() if rng.random() < 0.3 else c for c in s)
        if d == 5 and i % 2 == 0:
            j = rng.randint(0, len(s))
            s = s[:j] + " " + s[j:]
        inputs.append((s,))
    return Spec(
        "is_pal",
        f"returns True if {what}, else False",
        body,
        "s",
        ("normalise s", "compare it with its reverse"),
        fn,
        inputs,
    )


def fizz(rng: random.Random, d: int, cases: int) -> Spec:
    (a, wa), (b, wb) = sorted(zip(rng.sample(range(2, 8), 2), rng.sample(("Foo", "Bar", "Baz", "Zap"), 2)))
    what = f"returns '{wa}{wb}' if n is divisible by {a} and {b}, '{wa}' if by {a}, '{wb}' if by {b}, else str(n)"
    body = (
        f"    if n % {a} == 0 and n % {b} == 0:\n        return '{wa}{wb}'\n"
        f"    if n % {a} == 0:\n        return '{wa}'\n"
        f"    if n % {b} == 0:\n        return '{wb}'\n"
        "    return str(n)"
    )

    def fn(n: int) -> str:
        return (wa if n % a == 0 else "") + (wb if n % b == 0 else "") or str(n)

    inputs = [(a * b,), (a,), (b,)] + [(rng.randint(1, 60),) for _ in range(cases - 3)]
    steps = (f"check both {a} and {b} first", "then each alone", "else return str(n)")
    return Spec("label", what, body, "n", steps, fn, inputs)


def term(rng: random.Random, d: int, cases: int) -> Spec:
    a, k = rng.randint(1, 9), rng.randint(2, 9)
    inputs = [(1,)] + [(i,) for i in rng.sample(range(2, 15), cases - 1)]
    if d == 4:
        what = f"returns the n-th term (n >= 1) of {a}, {a + k}, {a + 2 * k}, ..."
        steps = (f"the terms start at {a} and grow by {k}", f"so term n is {a} + {k} * (n - 1)")
        return Spec(
            "term", what, f"    return {a} + {k} * (n - 1)", "n", steps, lambda n: a + k * (n - 1), inputs
        )
    what = (
        f"returns the n-th term (n >= 1) of {a}, {k}, {a + k}, ... (each term is the sum of the two before)"
    )
    body = f"    a, b = {a}, {k}\n    for _ in range(n - 1):\n        a, b = b, a + b\n    return a"

    def fn(n: int) -> int:
        x, y = a, k
        for _ in range(n - 1):
            x, y = y, x + y
        return x

    return Spec("term", what, body, "n", ("keep the last two terms", "step forward n - 1 times"), fn, inputs)


def dedupe(rng: random.Random, d: int, cases: int) -> Spec:
    what = "returns xs without repeated items, keeping each first occurrence in order"
    body = (
        "    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n    return out"
    )

    def fn(xs: list[int]) -> list[int]:
        return list(dict.fromkeys(xs))

    inputs = [(_ints(rng, rng.randint(0, 3 + d), 0, 5),) for _ in range(cases)]
    first = _ints(rng, 3, 0, 5)
    inputs[0] = (first + [first[0]],)  # a repeat, so returning xs unchanged fails
    return Spec(
        "dedupe", what, body, "xs", ("keep a list of items seen", "append x only if it is new"), fn, inputs
    )


# name -> (maker, lowest level, highest level): each level mixes the families that fit it, and each
# maker handles exactly its own levels.
FAMILIES: dict[str, tuple[Callable[[random.Random, int, int], Spec], int, int]] = {
    "linear": (linear, 1, 3),
    "scale": (scale, 1, 3),
    "extremes": (extremes, 1, 3),
    "clamp": (clamp, 3, 4),
    "filter_sum": (filter_sum, 3, 5),
    "count_chars": (count_chars, 3, 5),
    "digits": (digits, 3, 5),
    "palindrome": (palindrome, 3, 5),
    "fizz": (fizz, 4, 5),
    "term": (term, 4, 5),
    "dedupe": (dedupe, 4, 5),
}


def code(rng: random.Random, difficulty: int) -> Task:
    """Write a small Python function; `answer` is the reference source and `tests` its asserts."""
    names = [name for name, (_, lo, hi) in FAMILIES.items() if lo <= difficulty <= hi]
    maker = FAMILIES[rng.choice(names)][0]
    spec = maker(rng, difficulty, (3, 3, 4, 4, 5)[difficulty - 1])
    source = f"def {spec.name}({spec.args}):\n{spec.body}"
    tests = tuple(
        f"assert {spec.name}({', '.join(map(repr, args))}) == {spec.fn(*args)!r}" for args in spec.inputs
    )
    prompt = f"In Python, write {spec.name}({spec.args}) that {spec.what}."
    return Task("code", difficulty, prompt, source, spec.steps, tests)
