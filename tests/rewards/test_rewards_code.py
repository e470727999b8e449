"""Code reward: code extraction from responses and pass-rate scoring through the sandbox."""

from __future__ import annotations

from duomind.rewards import code as code_reward
from duomind.rewards.sandbox import Limits

TESTS = ["assert sq(2) == 4", "assert sq(-3) == 9", "assert sq(0) == 1"]
LIMITS = Limits(wall_s=5)


def test_extract_code_prefers_the_last_python_block_after_thinking():
    response = ("<think>\n```python\ndef sq(x): return 0\n```\n</think>\n\nFirst a sketch:\n```text\nnot code\n```\n"
                "```python\ndef sq(x):\n    return x * x\n```\nDone.")
    assert code_reward.extract_code(response) == "def sq(x):\n    return x * x\n"
    assert code_reward.extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert code_reward.extract_code("def f():\n    return 1") == "def f():\n    return 1"
    assert code_reward.extract_code("<think>\nonly thoughts") is None
    assert code_reward.extract_code("```python\nx = 1\n") == "x = 1\n"  # unclosed fence at the end


def test_pass_rate_and_all_or_nothing():
    response = "```python\ndef sq(x):\n    return x * x\n```"
    res = code_reward.score(response, TESTS, LIMITS)
    assert res.verdict == "wrong_answer"
    assert res.value == 2 / 3
    assert [t["passed"] for t in res.tests] == [True, True, False]
    assert code_reward.score(response, TESTS, LIMITS, all_or_nothing=True).value == 0.0
    assert code_reward.score(response, TESTS[:2], LIMITS, all_or_nothing=True).value == 1.0


def test_contained_failures_earn_nothing():
    spin = "```python\ndef sq(x):\n    return x * x\nwhile True:\n    pass\n```"
    res = code_reward.score(spin, TESTS, Limits(wall_s=1))
    assert (res.verdict, res.value) == ("timeout", 0.0)
    sneaky = "```python\ndef sq(x):\n    return x * x\n```"
    res = code_reward.score(sneaky, ["assert sq(2) == 4", "import os; os.system('true')"], LIMITS)
    assert (res.verdict, res.value) == ("blocked", 0.0)


def test_no_code():
    res = code_reward.score("", TESTS, LIMITS)
    assert (res.verdict, res.value) == ("crash", 0.0)
