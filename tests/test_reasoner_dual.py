"""Dual-system training: auto labels, fusion records, the AdaptThink reward, and the resumable pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duomind.config import ConfigError
from duomind.reasoner.dual import DualConfig, train_dual
from duomind.reasoner.fusion import adaptive_reward, auto_label, fusion_records, gain_label
from duomind.tasks import THINK_OPEN, generate


def test_auto_label_threshold():
    assert auto_label(1.0, 0.75) == "fast"
    assert auto_label(0.75, 0.75) == "fast"
    assert auto_label(0.5, 0.75) == "slow"
    with pytest.raises(ValueError, match="pass_rate"):
        auto_label(1.5, 0.75)


def test_gain_label_thinks_only_where_thinking_helps():
    assert gain_label(0.0, 0.75, 0.25) == "slow"
    assert gain_label(0.25, 0.5, 0.25) == "slow"  # a gain of exactly min_gain earns the thought
    assert gain_label(0.0, 0.0, 0.25) == "fast"  # unsolved either way: thinking would only cost tokens
    assert gain_label(1.0, 1.0, 0.25) == "fast"
    assert gain_label(0.75, 0.5, 0.25) == "fast"
    with pytest.raises(ValueError, match="slow_rate"):
        gain_label(0.5, -0.1, 0.25)


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


def test_calibrate_thinks_least_while_keeping_the_share_of_slow_accuracy():
    from duomind.reasoner.router import calibrate

    p, fast, slow = [0.9, 0.8, 0.3, 0.1], [0, 0, 1, 0], [1, 1, 1, 0]
    tokens = ([2, 2, 2, 2], [10, 10, 10, 10])
    full = calibrate(p, fast, slow, *tokens, keep=1.0)  # the two problems only thinking solves must think
    assert full["think_threshold"] == pytest.approx(0.55) and full["think_share"] == 0.5
    assert full["accuracy_over_slow"] == 1.0 and full["tokens_over_slow"] == pytest.approx(24 / 40)
    assert calibrate(p, fast, slow, *tokens, keep=0.6)["think_threshold"] == pytest.approx(0.85)
    assert calibrate(p, fast, slow, *tokens, keep=0.3)["think_threshold"] == 1.0  # fast alone keeps 1/3
    # a dip: thinking on the top problem alone loses its fast answer; fewer thoughts must not hide behind it
    dip = calibrate([0.9, 0.8, 0.7, 0.6], [1, 0, 0, 0], [0, 1, 1, 1], *tokens, keep=1 / 3)
    assert dip["think_share"] == 0.5 and dip["think_threshold"] == pytest.approx(0.75)
    assert calibrate(p, [0] * 4, [0] * 4, *tokens, keep=0.9)["think_threshold"] == 1.0  # nothing to keep
    with pytest.raises(ValueError, match="share of slow"):
        calibrate(p, fast, slow, *tokens, keep=0.0)
    with pytest.raises(ValueError, match="same number"):
        calibrate(p[:3], fast, slow, *tokens, keep=0.9)


def test_a_higher_keep_never_thinks_less():
    import random

    from duomind.reasoner.router import calibrate

    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(5, 40)
        p = [rng.random() for _ in range(n)]
        slow = [rng.random() < 0.6 for _ in range(n)]
        fast = [rng.random() < 0.3 for _ in range(n)]
        tok = ([rng.randint(1, 5) for _ in range(n)], [rng.randint(10, 50) for _ in range(n)])
        runs = [calibrate(p, fast, slow, *tok, keep=k) for k in (0.5, 0.8, 0.9, 0.95, 1.0)]
        shares = [r["think_share"] for r in runs]
        assert shares == sorted(shares)
        for r in runs:  # the threshold realises the chosen share, and the estimate meets the target
            assert sum(x >= r["think_threshold"] for x in p) == round(r["think_share"] * n)
            assert r["accuracy_over_slow"] >= r["keep"] - 1e-9 or not any(slow)


def test_config_rejects_bad_threshold_and_odd_rl_groups():
    with pytest.raises(ConfigError, match="fast_threshold"):
        DualConfig(fast_threshold=0.0)
    with pytest.raises(ConfigError, match="rl_group"):
        DualConfig(rl_group=3)
    with pytest.raises(ConfigError, match="auto_rule"):
        DualConfig(auto_rule="threshold")
    with pytest.raises(ConfigError, match="min_gain"):
        DualConfig(min_gain=0.0)
    with pytest.raises(ConfigError, match="pretrain_packing='whole' is not one of concat, best_fit"):
        DualConfig(pretrain_packing="whole")
    with pytest.raises(ConfigError, match="auto_keep"):
        DualConfig(auto_keep=1.5)


def test_training_tasks_leave_out_every_record_of_a_held_out_prompt(tmp_path):
    from duomind.reasoner.dual import training_tasks
    from duomind.tasks import split_heldout, write_jsonl

    records = generate("sequence", n=120, seed=0, difficulty=[1])  # few distinct prompts: many repeat
    train, heldout = split_heldout(records, 0.1, seed=0)
    write_jsonl(tmp_path / "tasks.jsonl", records)
    write_jsonl(tmp_path / "heldout.jsonl", heldout)
    held_ids = {h.id for h in heldout}
    assert any(r.id not in held_ids and r.prompt in {h.prompt for h in heldout} for r in records)  # what ids miss
    assert training_tasks(tmp_path) == train


def test_stage1_settings_are_checked_before_any_training():
    with pytest.raises(ConfigError, match="needs a teacher"):
        DualConfig(distill={"iterations": 1})
    with pytest.raises(ConfigError, match="set by it"):
        DualConfig(teacher="t", distill={"student": "elsewhere"})
    with pytest.raises(ConfigError, match="set by it"):
        DualConfig(rl={"policy": "elsewhere"})
    with pytest.raises(ConfigError, match="max_step"):  # a typo in a step's settings, named with a hint
        DualConfig(rl={"max_step": 3})
    with pytest.raises(ConfigError, match="unknown key"):
        DualConfig(teacher={"preset": "demo", "steps": 3}, distill={})
    with pytest.raises(ConfigError, match="teacher.steps"):
        DualConfig(teacher={"model_preset": "demo"}, distill={})


def test_rl_step_without_ray_fails_at_load_naming_the_extra(monkeypatch):
    import duomind.reasoner.stage1 as stage1

    monkeypatch.setattr(stage1, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"duomind\[rl\]"):
        DualConfig(rl={"max_steps": 3})
    DualConfig(rl=None)  # without the RL step Ray is not needed


def test_whole_pipeline_pretrain_distill_rl_then_dual_and_the_card_names_every_step(tmp_path):
    """Pre-training -> dual SFT -> teacher -> iterative distillation with merging -> GRPO on Ray -> labels ->
    fusion -> eval -> ship: each step starts from the one before, and a finished run re-runs nothing."""
    pytest.importorskip("ray")
    from duomind.train.checkpoint import resolve_checkpoint

    cfg = DualConfig(out_dir=str(tmp_path / "run"), tasks=["add"], difficulty=[1, 2], n=120, heldout_fraction=0.1,
                     model_preset="tiny", vocab_size=300, seq_len=128, batch_size=8, pretrain_steps=3, sft_steps=4,
                     pretrain_work_lines=True,
                     teacher={"model_preset": "tiny", "model": {"num_hidden_layers": 3}, "steps": 4},
                     distill={"iterations": 1, "prompts_per_iteration": 8, "teacher_samples": 2, "student_samples": 2,
                              "max_new_tokens": 24, "select_size": 4, "selection": "random", "merge_checkpoints": 2,
                              "sft": {"max_steps": 2, "save_every": 1, "seq_len": 128, "global_batch_size": 4,
                                      "micro_batch_size": 4}},
                     rl={"max_steps": 2, "group_size": 2, "batch_groups": 1, "workers": 1, "max_new_tokens": 16,
                         "eval_max": 4, "mode_mix": {"fast": 0.5, "slow": 0.5}, "save_every": 1},
                     fusion_steps=2, label_pool=4, label_samples=2, max_new_tokens=24, eval_limit=4,
                     gen_batch_size=16, ship_to=str(tmp_path / "asset"), threads=1, progress=False)
    report = train_dual(cfg)
    run = Path(cfg.out_dir)
    # each step starts from the previous one's output
    import yaml

    assert yaml.safe_load((run / "sft" / "train_config.yaml").read_text())["init_from"] == str(
        resolve_checkpoint(run / "pretrain"))
    pre = yaml.safe_load((run / "pretrain" / "train_config.yaml").read_text())
    assert pre["mode"] == "pretrain" and pre["data"] == str(run / "data" / "corpus-lines.txt")
    lines, inline = (run / "data" / "corpus-lines.txt").read_text(), (run / "data" / "corpus.txt").read_text()
    assert "\nWork:\n" in lines and "\nWork:" not in lines.replace("\nWork:\n", "")  # every working on its own lines
    assert len(lines.split("\n\n")) == len(inline.split("\n\n"))  # the same documents, laid out otherwise
    assert (run / "teacher" / "latest").is_file() and (run / "data" / "sft_slow.jsonl").is_file()
    held = {json.loads(x)["prompt"] for x in (run / "data" / "heldout.jsonl").read_text().splitlines()}
    split = [json.loads(x) for x in (run / "data" / "train_tasks.jsonl").read_text().splitlines()]
    assert split and not held & {r["prompt"] for r in split}  # Stage 1 never prompts with a held-out problem
    distilled = json.loads((run / "distill" / "report.json").read_text())
    assert distilled["iterations"][0]["student"] == str(resolve_checkpoint(run / "sft"))
    rl_summary = json.loads((run / "rl" / "summary.json").read_text())
    assert rl_summary["steps"] == 2 and report["stage1"]["rl"]["steps"] == 2
    assert Path(report["dual_model"]).parent == run / "rl"  # labels and fusion start from the RL model
    assert report["stage1"]["distill"]["model"] == str(resolve_checkpoint(distilled["iterations"][-1]["student"]))
    card = (tmp_path / "asset" / "README.md").read_text()
    for step in ("pre-training 3 steps on the task corpus (worked steps one a line)", "dual SFT 4 steps",
                 "iterative distillation with merging, 1 iterations", "GRPO 2 steps", "fusion SFT 2 steps"):
        assert step in card
    assert not __import__("ray").is_initialized()  # the pipeline's own Ray instance is shut down
    before = (run / "report.json").stat().st_mtime_ns
    assert train_dual(cfg) == report  # resumed at the end: nothing runs again
    assert (run / "report.json").stat().st_mtime_ns == before


def test_gain_rule_labels_from_both_modes_and_a_run_keeps_its_rule(shipped_reasoner, tmp_path):
    import dataclasses

    cfg, report, _ = shipped_reasoner
    gain = dataclasses.replace(cfg, out_dir=str(tmp_path / "gain"), init_from=report["dual_model"], auto_rule="gain",
                               min_gain=0.5, rl_steps=0, firp_steps=0, ship_to=None)
    run = train_dual(gain)
    labels = [json.loads(x) for x in (tmp_path / "gain" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 6 and all(r["rule"] == "gain >= 0.5" for r in labels)
    assert all(r["label"] == ("slow" if r["slow_pass_rate"] - r["fast_pass_rate"] >= 0.5 else "fast") for r in labels)
    assert (tmp_path / "gain" / "labels-slow.partial.jsonl").is_file()
    assert run["labels"]["n"] == 6 and Path(run["model"]).parent.name == "fusion"
    # the fusion model there was trained on these labels: another rule in the same directory is refused
    with pytest.raises(ConfigError, match="new out_dir"):
        train_dual(dataclasses.replace(gain, auto_rule="pass_rate"))
    # and so are labels of another model (a changed init_from, or a Stage-1 step added to the recipe)
    with pytest.raises(ConfigError, match="pass rates of"):
        train_dual(dataclasses.replace(gain, init_from=report["model"]))


def test_pipeline_runs_and_resumes(shipped_reasoner):
    cfg, report, _ = shipped_reasoner
    run = Path(cfg.out_dir)
    assert set(report["eval"]) == {"fast", "slow", "auto"}
    assert Path(report["model"]).parent.name == "adapt" and set(report["eval_before_rl"]) == {"fast", "slow", "auto"}
    labels = [json.loads(x) for x in (run / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 6 and all(r["label"] == ("fast" if r["fast_pass_rate"] >= 0.75 else "slow") for r in labels)
    fusion = (run / "fusion.jsonl").read_text().splitlines()
    assert len(fusion) == 3 * 6
    assert report["labels"]["n"] == 6
    for ev in report["eval"].values():
        assert ev["n"] == 6 and 0.0 <= ev["accuracy"] <= 1.0 and set(ev["tokens_by_difficulty"]) <= {"1", "2"}
    # auto's think threshold, calibrated on new problems none of the data holds, and auto measured by argmax too
    router = json.loads((run / "router.json").read_text())
    assert report["router"] == router and router["n"] == 6 and router["model"] == report["model"]
    assert 0.0 <= router["think_threshold"] <= 1.0 and report["auto_argmax"]["n"] == 6
    taken = {json.loads(x)["prompt"] for x in (run / "data" / "tasks.jsonl").read_text().splitlines()}
    validation = [json.loads(x)["prompt"] for x in (run / "data" / "validation.jsonl").read_text().splitlines()]
    assert len(set(validation)) == 6 and not taken & set(validation)
    # a finished run is returned as it is: no stage runs again
    before = (run / "report.json").stat().st_mtime_ns
    assert train_dual(cfg) == report
    assert (run / "report.json").stat().st_mtime_ns == before


def test_firp_stage_is_lossless_and_the_shipped_model_is_the_trained_one(shipped_reasoner):
    import torch

    from duomind.reasoner.ship import is_shipped
    from duomind.train.checkpoint import load_model

    cfg, report, asset = shipped_reasoner
    assert report["firp"]["equal_outputs"] is True  # speculative decoding reproduces greedy token for token
    assert report["firp"]["prompts"] == 2 and report["firp"]["speedup"] > 0
    assert is_shipped(asset) and (asset / "predictors" / "drafter.json").is_file()
    assert (asset / "heldout.jsonl").read_text() == (Path(cfg.out_dir) / "data" / "heldout.jsonl").read_text()
    assert not (asset / "optimizer.safetensors").exists() and not (asset / "trainer_state.json").exists()
    ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        assert torch.equal(load_model(asset)(ids).logits, load_model(report["model"])(ids).logits)
    from duomind.serve.cli import load_engine

    engine, _ = load_engine(str(asset), max_batch=1)  # the shipped router reaches serving
    try:
        assert engine.think_threshold == report["router"]["think_threshold"]
    finally:
        engine.close()
    card = (asset / "README.md").read_text()
    assert "calibrated on 6 new problems" in card
    for mode in ("fast", "slow", "auto"):  # the card's table holds the measured numbers
        assert f"| {mode} | {report['eval'][mode]['accuracy']:.0%} | {report['eval'][mode]['mean_tokens']:.1f} |" in card


def test_a_failed_ship_leaves_the_previous_model_in_place(shipped_reasoner, tmp_path):
    import shutil

    from duomind.reasoner.ship import ship

    _, report, asset = shipped_reasoner
    dest = tmp_path / "asset"
    shutil.copytree(asset, dest)
    before = sorted(p.name for p in dest.iterdir())
    with pytest.raises(FileNotFoundError):
        ship(report["model"], dest, report, predictors=tmp_path / "missing")
    assert sorted(p.name for p in dest.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]  # no temporary directory left behind


def _think_prob(model, tok, prompt: str) -> float:
    import torch

    from duomind.tokenizer import THINK, chat_prompt, special_ids

    ids = torch.tensor([chat_prompt(tok, [{"role": "user", "content": prompt}], mode="auto")])
    with torch.no_grad():
        return float(model(ids).logits[0, -1].softmax(-1)[special_ids(tok)[THINK]])


@pytest.mark.parametrize("right", ["fast", "slow"])
def test_adaptthink_moves_the_auto_choice_toward_the_mode_that_is_right(shipped_reasoner, tmp_path, monkeypatch, right):
    """The RL update alone: a verifier that passes only one mode's answers must move P(<think> | auto) its way."""
    import duomind.distill.loop as loop
    from duomind.reasoner.adapt import AdaptConfig, train_adapt
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model

    class OneModeRight:
        def check(self, records):
            return [r["mode"] == right for r in records]

        def close(self):
            pass

    monkeypatch.setattr(loop, "Verifier", OneModeRight)
    cfg, report, _ = shipped_reasoner
    start = Path(report["dual_model"])
    tasks = generate("add", n=4, seed=5, difficulty=1)
    tok = load_tokenizer(start)
    before = [_think_prob(load_model(start), tok, t.prompt) for t in tasks]
    final = train_adapt(start, tmp_path / "rl", tasks, AdaptConfig(steps=3, prompts=4, group=4, lr=3e-3,
                                                                   max_new_tokens=16, save_every=3), progress=False)
    after = [_think_prob(load_model(final), tok, t.prompt) for t in tasks]
    moved = sum(after) - sum(before)
    assert moved < 0 if right == "fast" else moved > 0, (before, after)
    rows = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r[f"{right}_accuracy"] == 1.0 for r in rows)
    assert train_adapt(start, tmp_path / "rl", tasks, AdaptConfig(steps=3)) == final  # finished: nothing reruns
