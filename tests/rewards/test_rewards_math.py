"""Math verifier: answer extraction, normalisation, equivalence suite, time limit."""

from __future__ import annotations

import time

import pytest

from duomind.rewards import math as math_reward
from duomind.rewards import numeric
from duomind.rewards.suite import CASES


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("\\boxed 12.", "12."),
    ("nested \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("cut off \\boxed{\\frac{1}{2}", None),
    ("Work...\nAnswer: 3/4.", "3/4"),
    ("The final answer is $x = 5$.", "x = 5"),
    ("We get $a$ and then $17$ apples", "17"),
    ("there are 8 ways, not 9.", "9"),
    ("no numbers here", None),
])
def test_extract_answer(text, expected):
    assert math_reward.extract_answer(text) == expected


@pytest.mark.parametrize("raw, norm", [
    ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
    ("1{,}000", "1000"),
    ("12 apples", "12"),
    ("5\\text{ cm}", "5"),
    ("90^\\circ", "90"),
    ("\\text{(B)}", "(B)"),
    ("2x", "2x"),  # not a number with a unit
    ("\\left( 1, 2 \\right)", "( 1, 2 )"),
])
def test_normalize(raw, norm):
    assert math_reward.normalize(raw) == norm


def test_equivalence_suite_accuracy():
    assert len(CASES) >= 200
    assert sum(not ok for *_, ok, _ in CASES) >= 60  # plenty of near misses, so "always yes" fails
    wrong = [(g, r, ok) for g, r, ok, _ in CASES if (math_reward.score(r, g).value == 1.0) != ok]
    accuracy = 1 - len(wrong) / len(CASES)
    assert accuracy >= 0.98, wrong


def test_verdicts_and_think_span():
    assert math_reward.score("<think>\n\\boxed{3}\n</think>\n\n\\boxed{4}", "4").verdict == "ok"
    assert math_reward.score("<think>\n\\boxed{4}\n</think>\n\n\\boxed{3}", "4").verdict == "wrong_answer"
    assert math_reward.score("<think>\nstill thinking about 4", "4").verdict == "no_answer"
    res = math_reward.score("Answer: 0.75", "\\boxed{\\frac{3}{4}}")
    assert (res.value, res.verdict, res.extracted) == (1.0, "ok", "0.75")


def test_sympy_fallback_for_text_math_verify_cannot_parse(monkeypatch):
    monkeypatch.setattr(math_reward, "_parse", lambda s: ())  # as if math-verify understood nothing
    math_reward._equivalent.cache_clear()
    assert math_reward.equivalent("(x+1)**2", "x**2 + 2*x + 1")
    assert not math_reward.equivalent("(x+1)**2", "x**2 + 1")
    math_reward._equivalent.cache_clear()  # forget answers decided without math-verify


def test_sympy_fallback_never_evaluates_code(monkeypatch, tmp_path):
    # parse_expr evals its input: a response must not be able to run Python through the fallback
    monkeypatch.setattr(math_reward, "_parse", lambda s: ())
    math_reward._equivalent.cache_clear()
    target = tmp_path / "pwned"
    for attack in (f"__import__('os').system('touch {target}')", f"(lambda: open('{target}', 'w'))()",
                   "x.__class__", "exec(1)", "[x for x in (1,)]"):
        assert not math_reward.equivalent(attack, "3")
        assert not math_reward._safe_for_sympy(attack)
    assert not target.exists()
    assert math_reward._safe_for_sympy("sqrt(2)*x**2 + 3 x - sin(pi/2)")
    math_reward._equivalent.cache_clear()


def test_time_limit_per_check(monkeypatch):
    monkeypatch.setattr(math_reward, "equivalent", lambda p, g: time.sleep(10))
    res = math_reward.score("\\boxed{1}", "1", timeout_s=0.2)
    assert res.verdict == "timeout" and res.value == 0.0  # without the alarm: 10 s, then wrong_answer


@pytest.mark.parametrize("answer", ["(" * 3000 + "1" + ")" * 3000, "-" * 5000 + "1", "2^" * 3000 + "1"])
def test_pathological_answers_score_zero_without_raising(answer):
    res = math_reward.score(f"\\boxed{{{answer}}}", "1", timeout_s=0.5)
    assert res.value == 0.0 and res.verdict in ("wrong_answer", "timeout")


@pytest.mark.parametrize("a, b, same", [
    ("x^2 + 2x + 1", "(x+1)^2", True),
    ("x^2 + 2x + 1", "(x-1)^2", False),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("3\\sqrt{3}", "\\sqrt{27}", True),
    ("\\sqrt[3]{8}", "2", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\sqrt23", "3\\sqrt{2}", True),  # LaTeX: \sqrt takes one digit
    ("2^{n+1}", "2 \\cdot 2^n", True),
    ("a b", "b \\times a", True),
])
def test_numeric_fingerprints(a, b, same):
    va, vb = numeric.value_of(a), numeric.value_of(b)
    assert va is not None and vb is not None
    assert (va[0] == vb[0] and all(numeric.close(x, y) for x, y in zip(va[1], vb[1]))) == same


@pytest.mark.parametrize("expr", ["x = 3", "\\infty", "\\sin x", "e^2", "2i", "2\\frac{1}{3}", "2^{1000}", "(1, 2)",
                                  "\\text{cm}", "x <= 1", "x+"])
def test_numeric_declines_what_it_cannot_decide(expr):
    assert numeric.value_of(expr) is None


def test_fast_paths_agree_with_math_verify_on_the_suite(monkeypatch):
    # the fast paths are shortcuts, not a second opinion: where they decide, math-verify must agree
    decided = []
    for gold, response, _, _ in CASES:
        pred = math_reward.extract_answer(response)
        if pred is None:
            continue
        p, g = math_reward.normalize(pred), math_reward.normalize(gold)
        a, b = math_reward._exact_number(p), math_reward._exact_number(g)
        fast = math_reward._compare_numbers(a, b) if a and b else math_reward._compare_values(p, g)
        if fast is not None:
            gp, pp = math_reward._parse(g), math_reward._parse(p)
            slow = math_reward._verify(gp, pp) if math_reward._parsed(gp) and math_reward._parsed(pp) else None
            decided.append((gold, pred, fast, slow))
    assert len(decided) > 100
    disagree = [d for d in decided if d[3] is not None and d[2] != d[3]]
    assert len(disagree) <= 3, disagree
