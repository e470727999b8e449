"""Mode control at decode time on a constructed model: fast/slow/auto, thinking budget, repetition self-repair."""

from __future__ import annotations

import queue

import pytest
from serve_helpers import map_model

from duomind.reasoner.control import RepairConfig, ThinkingControl, repeating_period
from duomind.reasoner.modes import EFFORT_BUDGETS, resolve_mode
from duomind.serve.engine import Engine, SamplingParams
from duomind.tokenizer import chat_prompt, special_ids


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    """A model that, greedily, loops `a b c a b c ...` inside a thinking span (c's second choice is d)."""
    tok = tiny_tokenizer
    v = tok.convert_tokens_to_ids
    a, b, c, d, x = (v(ch) for ch in "abcdx")
    sp = special_ids(tok)
    think, end, im_end = sp["<think>"], sp["</think>"], sp["<|im_end|>"]
    table = {sp["<|slow|>"]: [a], sp["<|fast|>"]: [think, x], sp["<|auto|>"]: [think],
             think: [a], a: [b], b: [c], c: [a, d], d: [end], end: [x], x: [im_end]}
    return tok, map_model(len(tok), table)


def run(setup, mode, budget=None, repair=RepairConfig(min_repeats=2, min_span=6, max_period=4, max_repairs=1),
        max_tokens=60, think_threshold=None):
    tok, model = setup
    engine = Engine(model, tok, max_batch=2)
    try:
        q: queue.Queue = queue.Queue()
        ids = chat_prompt(tok, [{"role": "user", "content": "hi"}], mode=mode)
        control = ThinkingControl(mode, special_ids(tok), budget, repair, think_threshold)
        engine.submit(ids, SamplingParams(max_tokens=max_tokens), control, q.put)
        parts = []
        while True:
            delta = q.get(timeout=30)
            parts.append(delta)
            if delta.finish_reason:
                break
    finally:
        engine.close()
    return "".join(p.reasoning for p in parts), "".join(p.content for p in parts), parts[-1]


def test_slow_mode_forces_the_span_and_repair_steers_out_of_the_loop(setup):
    reasoning, content, last = run(setup, "slow")  # the model itself would answer 'a' without thinking
    assert reasoning == "abcabcd"  # loop detected after two periods: 'a' banned once, the model takes 'd'
    assert content == "x" and last.finish_reason == "stop" and last.mode == "slow"
    assert last.info["repairs"] == 1 and last.info["budget_hit"] is False


def test_without_repair_the_loop_runs_to_max_tokens(setup):
    reasoning, content, last = run(setup, "slow", repair=None, max_tokens=20)
    assert last.finish_reason == "length" and content == "" and reasoning.startswith("abcabcabc")


def test_repeated_loop_after_max_repairs_closes_the_span(setup, tiny_tokenizer):
    tok, model = setup
    # make d lead back into the loop: after one repair the loop recurs and the span is closed instead
    v = tok.convert_tokens_to_ids
    d, a = v("d"), v("a")
    end = special_ids(tok)["</think>"]
    saved = model.lm_head.weight[:, d].clone()
    model.lm_head.weight.data[:, d] = 0
    model.lm_head.weight.data[a, d] = 10.0
    try:
        reasoning, content, last = run(setup, "slow")
    finally:
        model.lm_head.weight.data[:, d] = saved
    assert reasoning == "abcabcdabcabc" and content == "x" and last.info["repairs"] == 2
    assert end not in [v(ch) for ch in reasoning]


def test_budget_closes_the_span_and_the_model_answers(setup):
    reasoning, content, last = run(setup, "slow", budget=4, repair=None)
    assert reasoning == "abca" and content == "x" and last.info["budget_hit"] is True
    assert last.reasoning_tokens == 6  # <think> + 4 + </think>


def test_fast_never_emits_think_tags_even_when_the_model_prefers_them(setup):
    reasoning, content, last = run(setup, "fast")
    assert reasoning == "" and content == "x" and last.mode == "fast" and last.reasoning_tokens == 0


def test_auto_follows_the_models_first_token(setup):
    tok, model = setup
    reasoning, content, last = run(setup, "auto")
    assert last.mode == "slow" and reasoning.startswith("abc") and content == "x"
    sp = special_ids(tok)
    x = tok.convert_tokens_to_ids("x")
    col = model.lm_head.weight[:, sp["<|auto|>"]].clone()
    model.lm_head.weight.data[:, sp["<|auto|>"]] = 0
    model.lm_head.weight.data[x, sp["<|auto|>"]] = 10.0
    try:
        reasoning, content, last = run(setup, "auto")
    finally:
        model.lm_head.weight.data[:, sp["<|auto|>"]] = col
    assert last.mode == "fast" and reasoning == "" and content == "x"


def test_auto_think_threshold_decides_by_the_models_probability_in_serving_and_in_evaluation(setup):
    import torch

    from duomind.generate.cli import stop_ids
    from duomind.reasoner.router import generate_auto, think_probs

    tok, model = setup
    sp = special_ids(tok)
    auto, think, x = sp["<|auto|>"], sp["<think>"], tok.convert_tokens_to_ids("x")
    col = model.lm_head.weight[:, auto].clone()
    model.lm_head.weight.data[:, auto] = 0  # after <|auto|>: <think> and x equally likely, about half each
    model.lm_head.weight.data[[think, x], auto] = 1.0
    try:
        ids = chat_prompt(tok, [{"role": "user", "content": "hi"}], mode="auto")
        p = think_probs(model, [ids], think)[0]
        with torch.no_grad():
            assert p == pytest.approx(float(model(torch.tensor([ids])).logits[0, -1].softmax(-1)[think]))
        assert 0.4 < p < 0.5
        for threshold, mode in ((p * 0.999, "slow"), (p * 1.001, "fast")):
            reasoning, content, last = run(setup, "auto", repair=None, max_tokens=30, think_threshold=threshold)
            assert last.mode == mode and (reasoning.startswith("abc") if mode == "slow" else content == "x")
            # evaluation's auto decoding (no engine) makes the same choice and then the same greedy tokens
            assert generate_auto(model, tok, [ids, ids], 30, threshold, stop_ids(tok)) == [last.token_ids] * 2
    finally:
        model.lm_head.weight.data[:, auto] = col
    with pytest.raises(ValueError, match="probability"):
        ThinkingControl("auto", special_ids(tok), think_threshold=1.5)


def test_a_bad_think_threshold_is_refused_naming_where_it_came_from(tmp_path):
    from duomind.reasoner.router import read_threshold
    from duomind.serve.cli import load_engine

    assert read_threshold(tmp_path) is None  # no router.json: auto decides by argmax
    for bad in ("1.5", "true", "null"):
        (tmp_path / "router.json").write_text(f'{{"think_threshold": {bad}}}')
        with pytest.raises(ValueError, match=r"router.json \(recalibrate .* probability in \[0, 1\], got"):
            read_threshold(tmp_path)
    with pytest.raises(ValueError, match="--think_threshold: a think threshold is a probability"):
        load_engine(str(tmp_path), think_threshold=-0.1)  # refused before any checkpoint is looked for


def test_repeating_period_detection():
    cfg = RepairConfig(min_repeats=3, min_span=6, max_period=4)
    assert repeating_period([9, 1, 2, 1, 2, 1, 2], cfg) == 2
    assert repeating_period([1, 2, 1, 2, 1, 3], cfg) is None
    assert repeating_period([5] * 6, cfg) == 1
    assert repeating_period([1, 2, 3, 4, 5] * 3, cfg) is None  # period 5 is beyond max_period


def test_resolve_mode_precedence_and_switches():
    msgs = [{"role": "user", "content": "solve it /no_think"}]
    cleaned, choice = resolve_mode(msgs)
    assert cleaned[0]["content"] == "solve it" and choice.mode == "fast" and choice.source == "message"
    _, choice = resolve_mode(msgs, reasoning_effort="high")  # request fields are hard switches
    assert (choice.mode, choice.budget, choice.source) == ("slow", EFFORT_BUDGETS["high"], "reasoning_effort")
    assert EFFORT_BUDGETS["low"] < EFFORT_BUDGETS["medium"] < EFFORT_BUDGETS["high"]
    _, choice = resolve_mode(msgs, mode="auto", reasoning_effort="low")
    assert choice.mode == "auto" and choice.budget == EFFORT_BUDGETS["low"]
    _, choice = resolve_mode(msgs, enable_thinking=True, thinking_budget=7)
    assert (choice.mode, choice.budget) == ("slow", 7)
    with pytest.raises(ValueError, match="send only one"):
        resolve_mode(msgs, mode="fast", enable_thinking=True)
    _, choice = resolve_mode([{"role": "user", "content": "a /think b /auto_think"}])
    assert choice.mode == "auto"
    cleaned, choice = resolve_mode([{"role": "user", "content": "see /thinking and a/think/b"}], default="fast")
    assert cleaned[0]["content"] == "see /thinking and a/think/b" and choice.source == "default"
    with pytest.raises(ValueError, match="mode='medium'"):
        resolve_mode(msgs, mode="medium")


def test_terminal_chat_toggles_modes_and_dims_thinking(setup):
    import io

    from rich.console import Console

    from duomind.serve.cli import chat_session

    tok, model = setup
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=120)
    engine = Engine(model, tok, max_batch=1)
    try:
        history = chat_session(engine, ["/fast", "hi", "/slow", "hi again", "/exit", "never read"], console)
    finally:
        engine.close()
    text = out.getvalue()
    assert "mode: fast" in text and "mode: slow" in text
    assert "(fast · 2 tokens)" in text and "(slow · " in text
    assert "\x1b[2mthinking: " in text and "\x1b[2mb\x1b[0m\x1b[2mc\x1b[0m" in text  # the span, dimmed
    assert "\nx\n" in text  # the answer, plain
    assert [m["content"] for m in history] == ["hi", "x", "hi again", "x"]
