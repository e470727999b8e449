"""Format and behaviour terms: think structure per mode, repetition, length."""

from __future__ import annotations

import pytest

from duomind.rewards.format import format_score, length_penalty, repetition_penalty, split_think

SLOW = "<think>\nLet me add 2 and 2.\n</think>\n\n4"


@pytest.mark.parametrize("response, mode, ok", [
    (SLOW, "slow", True),
    (SLOW, "auto", True),
    (SLOW, None, True),
    (SLOW, "fast", False),
    ("4", "fast", True),
    ("4", "auto", True),
    ("4", "slow", False),
    ("<think></think>4", "fast", False),  # empty think tags leaking into fast mode
    ("<think>\n</think>\n\n4", "fast", False),
    ("<think>\n\n</think>\n\n4", "slow", False),  # empty reasoning
    ("<think>\nhmm\n</think>\n\n", "slow", False),  # no answer
    ("<think>\nhmm", "slow", False),  # unterminated
    ("<think>a</think><think>b</think>4", "slow", False),
    ("Sure! <think>\nhmm\n</think>\n\n4", "slow", False),  # text before the think span
    ("", "auto", False),
])
def test_format_by_mode(response, mode, ok):
    res = format_score(response, mode)
    assert res.value == (1.0 if ok else 0.0), res.reason


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        format_score("4", "medium")


def test_split_think():
    assert split_think(SLOW) == ("\nLet me add 2 and 2.\n", "\n\n4")
    assert split_think("4") == (None, "4")
    assert split_think("reasoning</think>answer") == ("reasoning", "answer")  # template pre-filled <think>
    assert split_think("<think>never closed") == ("never closed", "")


def test_repetition_penalty():
    natural = "First add the tens, then the units, and finally check the carry so the sum is right."
    assert repetition_penalty(natural) == 0.0
    loop = "I think the answer is 4. " * 50
    assert repetition_penalty(loop) < -0.9
    half = natural + " " + " ".join(["again and again"] * 10)
    assert -0.9 < repetition_penalty(half) < 0.0
    assert repetition_penalty("short") == 0.0


def test_length_penalty():
    assert length_penalty("word " * 10, target=20, limit=40) == 0.0
    assert length_penalty("word " * 30, target=20, limit=40) == pytest.approx(-0.5)
    assert length_penalty("word " * 100, target=20, limit=40) == -1.0
    with pytest.raises(ValueError):
        length_penalty("x", target=40, limit=20)
