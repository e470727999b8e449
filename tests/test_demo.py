"""`duomind demo` end to end at toy scale: data, tokenizer, pre-training, SFT, the table; a rerun reuses it all."""

from __future__ import annotations

from duomind.demo import demo


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, capsys):
    out = tmp_path / "demo"
    acc = demo(out_dir=str(out), pretrain_steps=3, sft_steps=2, n=400, show=3, threads=1)
    assert set(acc) == {"fast", "slow"} and all(0.0 <= a <= 1.0 for a in acc.values())
    printed = capsys.readouterr().out
    assert "held-back problems" in printed and "accuracy on" in printed
    final = out / "sft" / "step-000002"
    assert (final / "model.safetensors").is_file() and (out / "pretrain" / "loss.png").is_file()
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert demo(out_dir=str(out), pretrain_steps=3, sft_steps=2, n=400, show=3, threads=1) == acc
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp  # nothing retrained
