"""Speculative steps in the engine (FIRP drafts while a greedy sequence runs alone): output == plain greedy."""

from __future__ import annotations

import queue
import random

import pytest
from serve_helpers import map_model, tiny_model

from duomind.generate import generate
from duomind.generate.cli import stop_ids
from duomind.generate.drafters import FIRPDrafter, PromptLookup
from duomind.generate.predictors import build
from duomind.reasoner.control import RepairConfig, ThinkingControl
from duomind.serve.engine import Engine, SamplingParams
from duomind.tokenizer import chat_prompt, special_ids


def finals(engine, jobs):
    queues = []
    for ids, params, control in jobs:
        q: queue.Queue = queue.Queue()
        engine.submit(ids, params, control, q.put)
        queues.append(q)
    out = []
    for q in queues:
        parts = []
        while True:
            d = q.get(timeout=60)
            parts.append(d)
            if d.finish_reason:
                break
        out.append(("".join(p.reasoning for p in parts), "".join(p.content for p in parts), parts[-1]))
    return out


def test_firp_drafts_keep_greedy_output_alone_and_in_a_batch(tiny_tokenizer):
    model = tiny_model(len(tiny_tokenizer), context=128)
    drafter = FIRPDrafter(model, build(model, "firp", k=3, layer=1))  # untrained: few drafts survive, none wrong
    engine = Engine(model, tiny_tokenizer, max_batch=4, drafter=drafter)
    rng = random.Random(3)
    prompts = [[rng.randrange(10, 250) for _ in range(rng.randint(2, 20))] for _ in range(5)]
    try:
        alone = [finals(engine, [(p, SamplingParams(max_tokens=30), None)])[0][2].token_ids for p in prompts]
        together = [f[2].token_ids for f in finals(engine, [(p, SamplingParams(max_tokens=8 + 5 * i), None)
                                                            for i, p in enumerate(prompts)])]
        stats = engine.stats()["speculation"]
    finally:
        engine.close()
    stops = stop_ids(tiny_tokenizer)
    assert alone == [generate(model, [p], max_new_tokens=30, stop_tokens=stops)[0] for p in prompts]
    assert together == [generate(model, [p], max_new_tokens=8 + 5 * i, stop_tokens=stops)[0]
                        for i, p in enumerate(prompts)]
    assert stats["drafter"] == "FIRPDrafter" and stats["steps"] > 0 and stats["drafted"] > 0


@pytest.mark.parametrize("mode", ["slow", "fast"])
def test_drafts_respect_the_mode_rules(tiny_tokenizer, mode):
    """The looping constructed model with prompt lookup: drafts are accepted, mode rules and repair still hold."""
    tok = tiny_tokenizer
    v = tok.convert_tokens_to_ids
    a, b, c, d, x = (v(ch) for ch in "abcdx")
    sp = special_ids(tok)
    think, end = sp["<think>"], sp["</think>"]
    model = map_model(len(tok), {sp["<|slow|>"]: [a], sp["<|fast|>"]: [think, x], think: [a], a: [b], b: [c],
                                 c: [a, d], d: [end], end: [x], x: [a]})  # x -> a: the answer loops too
    ids = chat_prompt(tok, [{"role": "user", "content": "hi"}], mode=mode)

    def job():
        repair = RepairConfig(min_repeats=3, min_span=9, max_period=4, max_repairs=1)
        return [(ids, SamplingParams(max_tokens=40), ThinkingControl(mode, sp, None, repair))]

    plain = Engine(model, tok, max_batch=2)
    spec = Engine(model, tok, max_batch=2, drafter=PromptLookup(k=4))
    try:
        want, got = finals(plain, job())[0], finals(spec, job())[0]
        stats = spec.stats()["speculation"]
    finally:
        plain.close()
        spec.close()
    assert got[:2] == want[:2] and got[2].token_ids == want[2].token_ids
    assert "<think>" not in got[1] and stats["accepted"] > 0
    if mode == "slow":
        assert got[2].info["repairs"] == 1 and got[0].startswith("abcabcabc")


def test_predictors_beside_the_checkpoint_are_picked_up(tiny_checkpoint, tmp_path):
    import shutil

    from duomind.generate.predictors import save_predictors
    from duomind.serve.cli import load_engine
    from duomind.train.checkpoint import load_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    model = load_model(ckpt)
    save_predictors(build(model, "firp", k=2, layer=1), model, ckpt / "predictors")
    engine, _ = load_engine(str(ckpt), max_batch=2)
    try:
        got = finals(engine, [([5, 6, 7], SamplingParams(max_tokens=12), None)])[0][2].token_ids
        stats = engine.stats()["speculation"]
    finally:
        engine.close()
    assert stats["drafter"] == "FIRPDrafter" and stats["steps"] > 0
    assert got == generate(model, [[5, 6, 7]], max_new_tokens=12, stop_tokens=stop_ids(engine.tok))[0]
