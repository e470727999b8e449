"""Shared fixtures: tiny tokenizer and corpus made in the test session (nothing is downloaded)."""

from __future__ import annotations

import os
import random

import pytest
import torch

# xdist runs two workers on two cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        docs.append(f"Q: What is {a} + {b}?\nA: {a + b}")
    return docs


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from duomind.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(make_corpus() + ["the cat sat on the mat", "<think> reasoning </think>"], vocab_size=300
                    ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from duomind.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n\n".join(make_corpus(300, seed=1)))
    return path


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory):
    import json

    rng = random.Random(2)
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    with path.open("w") as fh:
        for i in range(64):
            a, b = rng.randint(0, 50), rng.randint(0, 50)
            slow = i % 2 == 0
            answer = f"<think>\n{a} + {b} = {a + b}\n</think>\n\n{a + b}" if slow else str(a + b)
            rec = {"id": f"t{i}", "mode": "slow" if slow else "fast",
                   "messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                {"role": "assistant", "content": answer}]}
            fh.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="session")
def shipped_reasoner(tmp_path_factory):
    """A tiny dual-system run with RL and FIRP predictors, shipped like the embedded model: (config, report, asset)."""
    from duomind.reasoner.dual import DualConfig, train_dual

    root = tmp_path_factory.mktemp("reasoner")
    cfg = DualConfig(out_dir=str(root / "run"), tasks=["add"], difficulty=[1, 2], n=120, heldout_fraction=0.1,
                     model_preset="tiny", vocab_size=300, seq_len=128, batch_size=8, sft_steps=6, fusion_steps=4,
                     label_pool=6, label_samples=2, max_new_tokens=24, eval_limit=6, gen_batch_size=16,
                     rl_steps=2, rl_prompts=2, rl_group=2, firp_steps=3, firp_batch_size=4, speed_prompts=2,
                     auto_keep=0.9, router_problems=6, ship_to=str(root / "asset"), threads=1,
                     progress=False)
    return cfg, train_dual(cfg), root / "asset"
