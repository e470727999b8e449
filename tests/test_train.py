"""The trainer: exact resume, data-parallel equivalence, SFT masking, KD, divergence and checkpoint safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from duomind.config import ConfigError, TrainConfig
from duomind.train import CheckpointError, TrainingDiverged, latest_checkpoint, load_model, train
from duomind.train.data import DataError, build_examples, read_records
from duomind.train.loop import kd_loss_sum


def cfg(tmp_path, tok, data, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), data=str(data), tokenizer=str(tok), seq_len=32, global_batch_size=8,
                micro_batch_size=4, max_steps=6, save_every=3, lr=1e-2, warmup_steps=2, progress=False, log_every=1)
    return TrainConfig(**{**base, **kw})


def weights(step_dir):
    return load_file(os.path.join(step_dir, "model.safetensors"))


def assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


def test_resume_is_exact(tmp_path, tiny_tokenizer_dir, corpus_file):
    straight = train(cfg(tmp_path / "a", tiny_tokenizer_dir, corpus_file))
    c = cfg(tmp_path / "b", tiny_tokenizer_dir, corpus_file, stop_at=3)
    train(c)  # "killed" after the step-3 checkpoint
    c.stop_at = None
    resumed = train(c)
    assert_same(weights(straight), weights(resumed), atol=1e-6)
    rows = [json.loads(x) for x in open(tmp_path / "b" / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "run" / "loss.png").stat().st_size > 1000


def test_micro_batching_does_not_change_the_gradient(tiny_tokenizer, sft_file):
    from duomind.config import ModelConfig
    from duomind.model import DuoMind
    from duomind.train.loop import accumulate

    ex = build_examples(tiny_tokenizer, read_records(sft_file), "sft", 64)
    idx = list(range(8))
    n_target = sum(sum(1 for y in ex.labels[i][1:] if y != -100) for i in idx)
    grads = []
    for micro in (8, 3, 1):
        torch.manual_seed(0)
        model = DuoMind(ModelConfig(vocab_size=len(tiny_tokenizer)))
        loss, _ = accumulate(model, None, ex, idx, n_target, TrainConfig(micro_batch_size=micro, global_batch_size=micro),
                             tiny_tokenizer.pad_token_id, "cpu")
        grads.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    for loss, g in grads[1:]:
        assert torch.allclose(loss, grads[0][0], atol=1e-6)
        assert_same(g, grads[0][1], atol=1e-6)


def test_two_process_run_equals_one_process(tmp_path, tiny_tokenizer_dir, corpus_file):
    args = ["--data", str(corpus_file), "--tokenizer", str(tiny_tokenizer_dir), "--max_steps", "4", "--seq_len", "32",
            "--global_batch_size", "8", "--micro_batch_size", "4", "--progress", "false", "--threads", "1"]
    one = train(cfg(tmp_path, tiny_tokenizer_dir, corpus_file, out_dir=str(tmp_path / "one"), max_steps=4,
                    lr=1e-3, warmup_steps=20, save_every=100))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
           "-m", "duomind.cli", "train", *args, "--out_dir", str(tmp_path / "two")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert_same(weights(one), weights(tmp_path / "two" / "step-000004"), atol=1e-5)


def test_sft_warns_when_chats_are_cut(tiny_tokenizer, sft_file):
    with pytest.warns(UserWarning, match=r"chats are longer than seq_len=8 tokens and were cut"):
        ex = build_examples(tiny_tokenizer, read_records(sft_file), "sft", 8)
    assert max(len(x) for x in ex.inputs) == 8


def test_best_fit_packing_keeps_every_document_whole(tiny_tokenizer, corpus_file):
    records = read_records(corpus_file)
    eos = tiny_tokenizer.eos_token_id
    docs = [ids + [eos] for ids in tiny_tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]]
    seq_len = 3 * max(map(len, docs))

    def whole(windows):  # documents found contiguous inside a single window
        joined = ["," + ",".join(map(str, w)) + "," for w in windows]
        return sum(any("," + ",".join(map(str, d)) + "," in j for j in joined) for d in docs)

    concat = build_examples(tiny_tokenizer, records, "pretrain", seq_len).inputs
    packed = build_examples(tiny_tokenizer, records, "pretrain", seq_len, packing="best_fit")
    assert packed.inputs == packed.labels and max(map(len, packed.inputs)) <= seq_len
    assert sorted(t for w in packed.inputs for t in w) == sorted(t for d in docs for t in d)  # nothing lost or doubled
    assert whole(packed.inputs) == len(docs) > whole(concat)  # concat splits the documents that cross an edge
    assert sum(map(len, packed.inputs)) / (seq_len * len(packed)) > 0.9  # short windows stay rare
    # documents longer than a window are cut into window-sized pieces, every token kept
    cut = build_examples(tiny_tokenizer, records[:20], "pretrain", 8, packing="best_fit").inputs
    assert max(map(len, cut)) == 8 and sorted(t for w in cut for t in w) == sorted(t for d in docs[:20] for t in d)


def test_sft_trains_only_on_assistant_tokens(tiny_tokenizer, sft_file):
    ex = build_examples(tiny_tokenizer, read_records(sft_file), "sft", 64)
    ids, labels = ex.inputs[0], ex.labels[0]
    trained = tiny_tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert trained.startswith("<think>") and trained.endswith("<|im_end|>")
    assert "user" not in trained and "What is" not in trained


def test_kd_loss_of_a_model_against_itself_is_zero():
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert kd_loss_sum(logits, logits, mask, 2.0).abs() < 1e-5
    assert kd_loss_sum(logits, torch.randn(2, 5, 11), mask, 2.0) > 0.01


def test_kd_run_moves_student_towards_teacher(tmp_path, tiny_tokenizer_dir, sft_file):
    teacher = train(cfg(tmp_path / "t", tiny_tokenizer_dir, sft_file, mode="sft", max_steps=8, seq_len=64))
    student = cfg(tmp_path / "s", tiny_tokenizer_dir, sft_file, mode="kd", teacher=str(teacher), max_steps=8,
                  seed=1, log_every=1, seq_len=64)
    train(student)
    rows = [json.loads(x) for x in open(tmp_path / "s" / "run" / "metrics.jsonl") if "loss" in x]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_tokenizer_dir, corpus_file, monkeypatch):
    c = cfg(tmp_path, tiny_tokenizer_dir, corpus_file, max_steps=6, save_every=2)
    from duomind.train import loop

    real = loop.token_losses
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        ce, mask = real(logits, labels)
        return (ce * float("nan") if calls["n"] > 6 else ce), mask  # steps 1-3 fine (2 micro-batches each)

    monkeypatch.setattr(loop, "token_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="step 3.*step-000002.*intact"):
        train(c)
    good = latest_checkpoint(c.out_dir)
    assert good.name == "step-000002"
    # the run directory stands for its latest complete checkpoint
    by_run, by_step = load_model(c.out_dir), load_model(good)
    assert all(torch.equal(a, b) for a, b in zip(by_run.state_dict().values(), by_step.state_dict().values()))
    with pytest.raises(CheckpointError, match="not a checkpoint directory.*nor a run directory"):
        load_model(tmp_path / "nowhere")


def test_partial_or_corrupt_checkpoints_are_refused(tmp_path, tiny_tokenizer_dir, corpus_file):
    step = train(cfg(tmp_path, tiny_tokenizer_dir, corpus_file, max_steps=2, save_every=2))
    (step / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_model(step)
    step2 = train(cfg(tmp_path / "b", tiny_tokenizer_dir, corpus_file, max_steps=2, save_every=2))
    w = step2 / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(step2)


def test_wrong_shapes_on_load_name_the_tensor(tmp_path, tiny_tokenizer_dir, corpus_file):
    step = train(cfg(tmp_path, tiny_tokenizer_dir, corpus_file, max_steps=1, save_every=1))
    (step / "COMPLETE").unlink()
    (step / "trainer_state.json").unlink()
    conf = json.loads((step / "config.json").read_text())
    conf["intermediate_size"] = 64
    (step / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight.*shape"):
        load_model(step)


def test_bad_data_and_config_errors(tmp_path, tiny_tokenizer_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_records(empty)
    with pytest.raises(DataError, match="does not exist.*duomind data make"):
        read_records(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_records(bad)
    with pytest.raises(ConfigError, match="teacher"):
        TrainConfig(mode="kd")
    with pytest.raises(ConfigError, match="multiple of"):
        TrainConfig(global_batch_size=10, micro_batch_size=4)
    with pytest.raises(ConfigError, match="packing='bestfit' is not one of"):
        TrainConfig(packing="bestfit")


def test_cli_train_with_recipe_and_unknown_key(tmp_path, tiny_tokenizer_dir, corpus_file):
    from duomind.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {corpus_file}\ntokenizer: {tiny_tokenizer_dir}\nmax_steps: 2\nseq_len: 32\n"
                      f"global_batch_size: 4\nmicro_batch_size: 4\nprogress: false\nout_dir: {tmp_path / 'run'}\n")
    main(["train", "--config", str(recipe), "--lr", "0.002"])
    saved = (tmp_path / "run" / "train_config.yaml").read_text()
    assert "lr: 0.002" in saved
    recipe.write_text("max_stepz: 2\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(recipe)])


def test_model_overrides_are_validated_with_the_train_config():
    with pytest.raises(ConfigError, match="did you mean 'norm_style'"):
        TrainConfig(model={"norm_styl": "dssn"})
    with pytest.raises(ConfigError, match="known presets"):
        TrainConfig(model_preset="huge")
