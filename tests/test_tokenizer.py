"""Tokenizer: round trips, reasoning tokens are single tokens, chat template with modes, clear errors."""

from __future__ import annotations

import pytest

from duomind.tokenizer import SPECIAL_TOKENS, chat_prompt, load_tokenizer, special_ids, train_tokenizer


def test_special_tokens_are_atomic_and_text_round_trips(tiny_tokenizer):
    ids = special_ids(tiny_tokenizer)
    assert set(ids) == set(SPECIAL_TOKENS) and None not in ids.values()
    text = "<think>\n12 + 7 = 19\n</think>\n\n19<|im_end|>"
    enc = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert enc[0] == ids["<think>"] and ids["</think>"] in enc
    assert tiny_tokenizer.decode(enc) == text


def test_digits_are_split(tiny_tokenizer):
    assert tiny_tokenizer.tokenize("12345") == list("12345")


@pytest.mark.parametrize("mode", ["fast", "slow", "auto", None])
def test_chat_template_places_the_mode_marker(tiny_tokenizer, mode):
    ids = chat_prompt(tiny_tokenizer, [{"role": "user", "content": "What is 2 + 2?"}], mode=mode)
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert text.endswith(f"<|{mode}|>" if mode else "assistant\n")


def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode("Q: 3 + 4?") == tiny_tokenizer.encode("Q: 3 + 4?")
    assert again.chat_template == tiny_tokenizer.chat_template


def test_a_run_directory_loads_its_latest_checkpoints_tokenizer(tiny_tokenizer, tmp_path):
    from duomind.train.checkpoint import seal

    step = tmp_path / "run" / "step-000002"
    step.mkdir(parents=True)
    tiny_tokenizer.save_pretrained(step)
    (step / "config.json").write_text("{}")
    seal(step, {})
    (tmp_path / "run" / "latest").write_text("step-000002")
    assert load_tokenizer(tmp_path / "run").encode("Q: 3 + 4?") == tiny_tokenizer.encode("Q: 3 + 4?")


def test_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="duomind tokenizer train"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match="mode='turbo'"):
        chat_prompt(tiny_tokenizer, [{"role": "user", "content": "x"}], mode="turbo")


def test_cli_trains_a_tokenizer(tmp_path, corpus_file):
    from duomind.cli import main

    main(["tokenizer", "train", f"[{corpus_file}]", "--out", str(tmp_path / "tok"), "--vocab_size", "300"])
    assert len(load_tokenizer(tmp_path / "tok")) <= 300
