"""Dual-system training: auto labels, fusion records, the AdaptThink reward, and the resumable pipeline."""

from __future__ import annotations

import json

import pytest

from duomind.config import ConfigError
from duomind.reasoner.dual import DualConfig, train_dual
from duomind.reasoner.fusion import adaptive_reward, auto_label, fusion_records
from duomind.tasks import THINK_OPEN, generate


def test_auto_label_threshold():
    assert auto_label(1.0, 0.75) == "fast"
    assert auto_label(0.75, 0.75) == "fast"
    assert auto_label(0.5, 0.75) == "slow"
    with pytest.raises(ValueError, match="pass_rate"):
        auto_label(1.5, 0.75)


def test_fusion_records_keep_manual_modes_and_label_auto():
    tasks = generate("add", n=2, seed=0, difficulty=2)
    recs = fusion_records(tasks, ["fast", "slow"])
    assert [r["mode"] for r in recs] == ["fast", "slow", "auto"] * 2
    fast_auto, slow_auto = recs[2], recs[5]
    # the auto target is exactly the labelled mode's answer: the first token decides thinking
    assert fast_auto["messages"] == recs[0]["messages"] and not fast_auto["messages"][1]["content"].startswith(THINK_OPEN)
    assert slow_auto["messages"] == recs[4]["messages"] and slow_auto["messages"][1]["content"].startswith(THINK_OPEN)
    with pytest.raises(ValueError, match="label every task"):
        fusion_records(tasks, ["fast"])
    with pytest.raises(ValueError, match="auto label"):
        fusion_records(tasks, ["fast", "auto"])


def test_adaptive_reward_prefers_fast_only_when_it_is_right():
    ref = 0.8
    assert adaptive_reward(True, thought=False, reference_accuracy=ref) > adaptive_reward(True, thought=True,
                                                                                          reference_accuracy=ref)
    assert adaptive_reward(False, thought=False, reference_accuracy=ref) < adaptive_reward(True, thought=True,
                                                                                           reference_accuracy=ref)
    assert adaptive_reward(True, thought=True, reference_accuracy=ref) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="reference_accuracy"):
        adaptive_reward(True, False, 1.2)


def test_config_rejects_bad_threshold():
    with pytest.raises(ConfigError, match="fast_threshold"):
        DualConfig(fast_threshold=0.0)


def test_pipeline_runs_and_resumes(tmp_path):
    cfg = DualConfig(out_dir=str(tmp_path / "r"), tasks=["add"], difficulty=[1, 2], n=120, heldout_fraction=0.1,
                     model_preset="tiny", vocab_size=300, seq_len=128, batch_size=8, sft_steps=6, fusion_steps=4,
                     label_pool=6, label_samples=2, max_new_tokens=24, eval_limit=6, gen_batch_size=16, threads=1,
                     progress=False)
    report = train_dual(cfg)
    assert set(report["eval"]) == {"fast", "slow", "auto"}
    labels = [json.loads(x) for x in (tmp_path / "r" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 6 and all(r["label"] == ("fast" if r["fast_pass_rate"] >= 0.75 else "slow") for r in labels)
    fusion = (tmp_path / "r" / "fusion.jsonl").read_text().splitlines()
    assert len(fusion) == 3 * 6
    assert report["labels"]["n"] == 6
    for ev in report["eval"].values():
        assert ev["n"] == 6 and 0.0 <= ev["accuracy"] <= 1.0 and set(ev["tokens_by_difficulty"]) <= {"1", "2"}
    # a finished run is returned as it is: no stage runs again
    before = (tmp_path / "r" / "report.json").stat().st_mtime_ns
    assert train_dual(cfg) == report
    assert (tmp_path / "r" / "report.json").stat().st_mtime_ns == before
