"""Pruning checkpoints end to end: HF Llama / Qwen3 in, pruned, exported back, same logits in transformers;
the CLI verbs (plan, prune, recover) and their errors for bad calibration files and targets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

import duomind  # noqa: F401  (registers the DuoMind model type with transformers)
from duomind.cli import main as cli_main
from duomind.convert import convert
from duomind.train.checkpoint import load_model

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, initializer_range=0.1)


def hf_dir(hf_config, path, tokenizer_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, path / f.name)
    return path


@pytest.mark.parametrize("arch, hf_config", [
    ("llama", LlamaConfig(**TINY)),
    ("qwen3", Qwen3Config(**TINY, head_dim=16, attention_bias=True)),
])
def test_pruned_hf_model_exports_and_reloads_in_transformers(arch, hf_config, tmp_path, tiny_tokenizer_dir,
                                                             corpus_file):
    src = hf_dir(hf_config, tmp_path / "hf", tiny_tokenizer_dir)
    convert(src, tmp_path / "dm")
    cli_main(["prune", str(tmp_path / "dm"), str(tmp_path / "pruned"), "--method", "pangu-light",
              "--target_params", "0.6", "--calibration", str(corpus_file), "--calibration_seq_len", "32",
              "--calibration_samples", "8"])
    ours = load_model(tmp_path / "pruned")
    cfg = ours.model_config
    assert cfg.num_parameters() <= 0.6 * load_model(tmp_path / "dm").model_config.num_parameters()
    record = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert record["method"] == "pangu-light" and record["clap"] and record["slnp"]
    convert(tmp_path / "pruned", tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == arch
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert theirs.config.hidden_size == cfg.hidden_size and theirs.config.num_hidden_layers == cfg.num_hidden_layers
    ids = torch.randint(0, 320, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, ours(ids).logits, atol=1e-4)
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")(ids).logits, ours(ids).logits)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer_dir):
    path = tmp_path_factory.mktemp("prune") / "dm"
    convert(hf_dir(LlamaConfig(**TINY), path.parent / "hf", tiny_tokenizer_dir), path)
    return path


def test_plan_prints_before_any_work(base, capsys):
    cli_main(["prune", "plan", str(base), "--target_params", "0.5"])
    out = capsys.readouterr().out
    assert "pruning plan (pangu-light)" in out and "num_hidden_layers" in out and "total" in out
    with pytest.raises(SystemExit, match="not a multiple of --kv_heads"):
        cli_main(["prune", "plan", str(base), "--heads", "3", "--kv_heads", "2"])


def test_bad_calibration_and_targets_fail_cleanly(base, tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "short.txt").write_text("Q: 1 + 1?\nA: 2")
    args = ["prune", str(base), str(tmp_path / "out"), "--layers", "2", "--calibration_seq_len", "64"]
    with pytest.raises(SystemExit, match="is empty"):
        cli_main([*args, "--calibration", str(tmp_path / "empty.txt")])
    with pytest.raises(SystemExit, match="too short.*at least one full window"):
        cli_main([*args, "--calibration", str(tmp_path / "short.txt")])
    with pytest.raises(SystemExit, match="does not exist"):
        cli_main([*args, "--calibration", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit, match="larger than the model's hidden_size=64"):
        cli_main(["prune", str(base), str(tmp_path / "out"), "--hidden", "128"])
    assert not (tmp_path / "out").exists()


def test_prune_then_recover_by_kd(base, tmp_path, corpus_file):
    from duomind.train.loop import kd_loss_sum

    pruned = tmp_path / "short"
    cli_main(["prune", str(base), str(pruned), "--method", "shortgpt", "--layers", "2", "--calibration",
              str(corpus_file), "--calibration_seq_len", "32", "--calibration_samples", "8"])
    assert json.loads((pruned / "prune.json").read_text())["layer_metric"] == "bi"
    cli_main(["prune", "recover", str(pruned), str(tmp_path / "kd"), str(corpus_file), "--steps", "8",
              "--lr", "0.003", "--seq_len", "32", "--global_batch_size", "8", "--micro_batch_size", "8",
              "--threads", "1"])
    teacher, before, after = load_model(base), load_model(pruned), load_model(tmp_path / "kd")
    ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 23, dtype=torch.bool)
    with torch.no_grad():
        t = teacher(ids).logits
        kl_before = kd_loss_sum(before(ids).logits, t, mask, 1.0)
        kl_after = kd_loss_sum(after(ids).logits, t, mask, 1.0)
    assert kl_after < kl_before
    assert after.config.num_hidden_layers == 2
