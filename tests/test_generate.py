"""The decode loop: cached decoding equals uncached greedy, batching with padding, sampling controls."""

from __future__ import annotations

import pytest
import torch

from duomind.config import ModelConfig
from duomind.generate import filter_logits, generate, sample
from duomind.model import DuoMind


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DuoMind(ModelConfig(vocab_size=128, num_hidden_layers=2, norm_style="dssn", qk_norm=True)).eval()


def greedy_uncached(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_cached_greedy_equals_uncached_token_for_token(model):
    prompts = [[5, 9, 11, 3], [7], [1, 2, 3, 4, 5, 6, 7, 8]]
    out = generate(model, prompts, max_new_tokens=12)
    for p, o in zip(prompts, out):
        assert o == greedy_uncached(model, p, 12)


def test_batched_equals_one_by_one(model):
    prompts = [[5, 9, 11, 3], [7, 1]]
    batched = generate(model, prompts, max_new_tokens=8, temperature=0.8, top_k=20, seed=3)
    assert len(batched) == 2 and all(len(o) == 8 for o in batched)
    greedy = generate(model, prompts, max_new_tokens=8)
    assert greedy == [generate(model, [p], max_new_tokens=8)[0] for p in prompts]


def test_stop_tokens_end_each_sequence_and_streaming_sees_every_token(model):
    prompt = [[5, 9, 11, 3]]
    free = generate(model, prompt, max_new_tokens=10)[0]
    stop = free[4]
    seen = []
    out = generate(model, prompt, max_new_tokens=10, stop_tokens=[stop], stream=lambda row, tok: seen.append(tok))[0]
    assert out == free[: free.index(stop) + 1]
    assert seen == out


def test_a_chosen_first_token_continues_as_if_it_ended_the_prompt(model):
    prompts = [[5, 9, 11, 3], [7, 1]]
    seen = []

    def choose(logits):
        seen.append(logits.shape)
        return [42, 17]

    out = generate(model, prompts, max_new_tokens=6, first_token=choose)
    assert seen == [(2, 128)]  # called once, on the prefill's logits
    assert out == [[f, *greedy_uncached(model, [*p, f], 5)] for p, f in zip(prompts, (42, 17))]


def test_sampling_is_seeded_and_respects_top_k(model):
    a = generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=7)
    b = generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=7)
    assert a == b
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    assert set(filter_logits(logits, top_k=2).isfinite().nonzero()[:, 1].tolist()) == {1, 2}
    kept = filter_logits(logits, top_p=0.5).isfinite()
    assert kept.tolist() == [[False, True, False, False]]
    draws = {int(sample(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(i))) for i in range(50)}
    assert draws <= {1, 2}


def test_bad_prompts_are_clear_errors(model):
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, [[1]], max_new_tokens=10**6)
