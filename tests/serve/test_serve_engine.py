"""The continuous-batching engine: batched output == one-at-a-time greedy output, join/leave mid-batch."""

from __future__ import annotations

import queue
import random

import pytest
from serve_helpers import tiny_model

from duomind.generate import generate
from duomind.generate.cli import stop_ids
from duomind.serve.engine import Engine, Overloaded, SamplingParams


def collect(engine, ids, max_tokens, temperature=0.0, seed=None, control=None):
    q: queue.Queue = queue.Queue()
    engine.submit(ids, SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed), control, q.put)
    return q


def final(q, timeout=60):
    while True:
        d = q.get(timeout=timeout)
        if d.finish_reason:
            return d


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return tiny_model(len(tiny_tokenizer), context=128)


def test_batched_equals_one_at_a_time_greedy(model, tiny_tokenizer):
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 250) for _ in range(rng.randint(1, 30))] for _ in range(9)]
    budgets = [rng.randint(3, 25) for _ in prompts]
    # 3 slots for 9 requests: most wait, then join a running batch as others leave
    engine = Engine(model, tiny_tokenizer, max_batch=3, max_waiting=16)
    try:
        queues = [collect(engine, p, m) for p, m in zip(prompts, budgets)]
        got = [final(q).token_ids for q in queues]
    finally:
        engine.close()
    stops = stop_ids(tiny_tokenizer)
    want = [generate(model, [p], max_new_tokens=m, stop_tokens=stops)[0] for p, m in zip(prompts, budgets)]
    assert got == want


def test_request_joins_and_leaves_while_another_runs(model, tiny_tokenizer):
    engine = Engine(model, tiny_tokenizer, max_batch=4)
    events: list[tuple[str, bool]] = []
    short_q: queue.Queue = queue.Queue()
    long_prompt, short_prompt = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [40, 41]

    def long_sink(d):
        events.append(("long", bool(d.finish_reason)))
        if len(events) == 1:  # submitted from inside the long request's first step: joins at the next one
            engine.submit(short_prompt, SamplingParams(max_tokens=4), None, lambda d: (events.append(
                ("short", bool(d.finish_reason))), short_q.put(d)))

    long_q: queue.Queue = queue.Queue()
    engine.submit(long_prompt, SamplingParams(max_tokens=40), None, lambda d: (long_sink(d), long_q.put(d)))
    try:
        long_out, short_out = final(long_q), final(short_q)
    finally:
        engine.close()
    assert long_out.finish_reason and short_out.finish_reason
    stops = stop_ids(tiny_tokenizer)
    assert long_out.token_ids == generate(model, [long_prompt], max_new_tokens=40, stop_tokens=stops)[0]
    assert short_out.token_ids == generate(model, [short_prompt], max_new_tokens=4, stop_tokens=stops)[0]
    if long_out.completion_tokens > 6:  # the short one joined after the long one started and left before it ended
        assert events.index(("short", True)) < events.index(("long", True))
        assert events.index(("long", False)) < events.index(("short", False))


def test_window_slides_back_and_long_prompt_shifts_batch(model, tiny_tokenizer):
    """Many short requests through one slot pair walk the window to the end of the buffer; outputs stay exact."""
    engine = Engine(model, tiny_tokenizer, max_batch=2, max_waiting=64, context_len=64)
    rng = random.Random(1)
    prompts = [[rng.randrange(10, 250) for _ in range(rng.choice([2, 40]))] for _ in range(16)]
    budgets = [(7, 20, 13)[i % 3] for i in range(len(prompts))]  # staggered: the two rows rarely empty together
    try:
        queues = [collect(engine, p, m) for p, m in zip(prompts, budgets)]
        got = [final(q).token_ids for q in queues]
    finally:
        engine.close()
    assert engine.cache.moves >= 2  # the window was shifted for long prompts and slid back at the buffer's end
    stops = stop_ids(tiny_tokenizer)
    assert got == [generate(model, [p], max_new_tokens=m, stop_tokens=stops)[0] for p, m in zip(prompts, budgets)]


def test_seeded_sampling_is_batch_independent(model, tiny_tokenizer):
    engine = Engine(model, tiny_tokenizer, max_batch=4)
    try:
        alone = final(collect(engine, [5, 6, 7], 12, temperature=1.0, seed=3)).token_ids
        qs = [collect(engine, [5, 6, 7], 12, temperature=1.0, seed=3), collect(engine, [9, 9], 12, temperature=1.0)]
        together = final(qs[0]).token_ids
        final(qs[1])
    finally:
        engine.close()
    assert alone == together


def test_limits_and_overload(model, tiny_tokenizer):
    engine = Engine(model, tiny_tokenizer, max_batch=1, max_waiting=1, context_len=64)
    try:
        with pytest.raises(ValueError, match="context is 64 tokens"):
            engine.submit([1] * 60, SamplingParams(max_tokens=10), None, lambda d: None)
        with pytest.raises(ValueError, match="empty"):
            engine.submit([], SamplingParams(), None, lambda d: None)
        with engine.lock:  # hold the engine so the queue fills deterministically
            engine.submit([5], SamplingParams(max_tokens=3), None, lambda d: None)
            with pytest.raises(Overloaded, match="busy"):
                engine.submit([5], SamplingParams(max_tokens=3), None, lambda d: None)
    finally:
        engine.close()


def test_cancel_frees_the_slot(model, tiny_tokenizer):
    engine = Engine(model, tiny_tokenizer, max_batch=2)
    try:
        q: queue.Queue = queue.Queue()
        handle = engine.submit([5, 6], SamplingParams(max_tokens=100_000 // 1000), None, q.put)
        q.get(timeout=30)
        handle.cancel()
        from duomind.serve.engine import wait_idle

        assert wait_idle(engine, timeout=30)
        assert engine.stats()["running"] == 0
        again = final(collect(engine, [5, 6], 5))
        assert again.token_ids == generate(model, [[5, 6]], max_new_tokens=5, stop_tokens=stop_ids(tiny_tokenizer))[0]
    finally:
        engine.close()


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(model, tiny_tokenizer, monkeypatch):
    engine = Engine(model, tiny_tokenizer, max_batch=2)
    try:
        original = engine._decode

        def boom():
            raise RuntimeError("simulated kernel failure")

        with engine.lock:
            monkeypatch.setattr(engine, "_decode", boom)
            q = collect(engine, [5, 6], 5)
        d = final(q)
        assert d.finish_reason == "error" and "simulated" in d.error
        monkeypatch.setattr(engine, "_decode", original)
        prefill = engine._prefill
        with engine.lock:  # a failure while admitting answers the admitted requests too
            monkeypatch.setattr(engine, "_prefill", lambda seqs: boom())
            q = collect(engine, [5, 6], 5)
        assert final(q).finish_reason == "error"
        monkeypatch.setattr(engine, "_prefill", prefill)
        assert final(collect(engine, [5, 6], 5)).finish_reason in ("stop", "length")
    finally:
        engine.close()
