"""Iterative distillation: MinHash dedup, selection, the 7-step iteration end to end, merging, exact resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from duomind.config import ConfigError
from duomind.distill.config import DistillConfig
from duomind.distill.dedup import MinHashLSH, dedup, jaccard, lsh_bands, shingles
from duomind.distill.select import bin_of, difficulty, select_balanced, select_random, shortest_correct

# --------------------------------------------------------------------------------------------------
# MinHash-LSH
# --------------------------------------------------------------------------------------------------


def test_dedup_removes_rephrasings_but_keeps_different_problems():
    texts = ["What is 12 + 34?", "what is 12+34 ?", "What is 12 + 35?", "Find the next term: 1, 2, 3, ?",
             "Find the next term: 1, 2, 3, ?", "What is 12 + 34?"]
    kept, dropped = dedup(texts, threshold=0.8)
    assert kept == [0, 2, 3]
    assert dropped == {1: "t0", 4: "t3", 5: "t0"}
    kept, dropped = dedup(["What is 99 + 1?", "What is 5 + 5?"], against=["WHAT IS 99 + 1 ?"])
    assert kept == [1] and dropped == {0: "a0"}


def test_lsh_finds_every_pair_above_the_threshold():
    # long prompts differing in one word: Jaccard just above / below 0.8
    base = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"
    words = base.split()
    near = " ".join(words[:-1] + ["upsilon"])
    far = " ".join(words[:10] + ["x"] * 9)
    index = MinHashLSH(threshold=0.8, num_perm=128, ngram=2)
    index.add("base", base)
    assert jaccard(shingles(base), shingles(near)) >= 0.8
    assert index.query(near) == ["base"]
    assert index.query(far) == []
    bands, rows = lsh_bands(128, 0.8)
    assert bands * rows <= 128 and 1 - (1 - 0.8**rows) ** bands >= 0.99


def test_minhash_signature_estimates_jaccard():
    index = MinHashLSH(num_perm=256, ngram=1)
    a = {f"w{i}" for i in range(100)}
    b = {f"w{i}" for i in range(50, 150)}  # Jaccard 50 / 150 = 1/3
    agree = float((index.signature(a) == index.signature(b)).mean())
    assert abs(agree - 1 / 3) < 0.1
    assert (index.signature(a) == index.signature(set(a))).all()


# --------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------


def test_shortest_correct_and_difficulty():
    assert shortest_correct(["long answer", "short", "tiny"], [True, True, False]) == 1
    assert shortest_correct(["a", "b"], [False, False]) is None
    assert shortest_correct(["xx", "yy"], [True, True]) == 0  # ties: the earliest
    assert difficulty(0, 4) == 1.0 and difficulty(4, 4) == 0.0 and difficulty(1, 4) == 0.75
    assert [bin_of(d) for d in (0.25, 0.5, 0.75)] == ["easy", "medium", "hard"]
    with pytest.raises(ValueError):
        difficulty(5, 4)


def test_balanced_selection_follows_the_mix_and_drops_solved_and_unsolved():
    diffs = {f"e{i}": 0.25 for i in range(20)} | {f"m{i}": 0.5 for i in range(20)} | {f"h{i}": 0.75 for i in range(20)}
    diffs |= {f"s{i}": 0.0 for i in range(20)} | {f"u{i}": 1.0 for i in range(20)}
    mix = {"easy": 0.25, "medium": 0.5, "hard": 0.25}
    chosen = select_balanced(diffs, 20, mix, seed=1)
    assert len(chosen) == len(set(chosen)) == 20
    counts = {b: sum(bin_of(diffs[k]) == b for k in chosen) for b in mix}
    assert counts == {"easy": 5, "medium": 10, "hard": 5}
    assert not any(k[0] in "su" for k in chosen)
    assert chosen == select_balanced(diffs, 20, mix, seed=1)  # seeded
    # too few medium prompts: the shortfall goes to the other bins, total kept
    few = {k: v for k, v in diffs.items() if not k.startswith("m") or k in ("m0", "m1")}
    chosen = select_balanced(few, 20, mix, seed=0)
    assert len(chosen) == 20 and sum(k.startswith("m") for k in chosen) == 2
    # fewer candidates than asked: all usable ones, nothing solved or unsolved
    assert sorted(select_balanced({"a": 0.5, "b": 0.0, "c": 1.0}, 5, mix)) == ["a"]
    assert sorted(select_balanced({"a": 0.5, "b": 0.0}, 5, mix, drop_solved=False)) == ["a", "b"]


def test_random_selection_is_uniform_and_sized():
    keys = [str(i) for i in range(50)]
    chosen = select_random(keys, 10, seed=3)
    assert len(set(chosen)) == 10 and set(chosen) <= set(keys)
    assert chosen == select_random(list(reversed(keys)), 10, seed=3)  # order of the input does not matter
    assert len(select_random(keys, 100)) == 50


@pytest.mark.parametrize("fields, message", [
    ({"selection": "best"}, "selection"),
    ({"mix": {"easy": 1, "tricky": 1}}, "mix"),
    ({"select_size": [4, 4], "iterations": 3}, "one per iteration"),
    ({"select_size": 0}, "select_size"),
    ({"sft": {"data": "x.jsonl"}}, "sets itself"),
    ({"sft": {"max_stepz": 3}}, "sft"),
    ({"merge_method": "slerp"}, "cannot merge"),
    ({"teacher_temperature": 0.0}, "positive"),
    ({"mode": "auto"}, "mode"),
])
def test_bad_distill_configs_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**fields)


# --------------------------------------------------------------------------------------------------
# The iteration, end to end, on a teacher that memorised a handful of problems
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir):
    from duomind.config import TrainConfig
    from duomind.tasks import Task, generate, sft_record, write_jsonl
    from duomind.train.loop import train

    root = tmp_path_factory.mktemp("distill")
    tasks = generate("add", n=16, seed=3, difficulty=1)
    pool, held = tasks[:10], tasks[10:14]
    # a rephrased duplicate inside the pool and a near copy of a held-out problem: both must be dropped
    extra = [Task("add", 1, pool[0].prompt.lower().replace(" + ", "+"), pool[0].answer, pool[0].steps, id="dup-0"),
             Task("add", 1, held[0].prompt.upper(), held[0].answer, held[0].steps, id="dup-eval")]
    write_jsonl(root / "tasks.jsonl", pool + extra)
    write_jsonl(root / "heldout.jsonl", held)
    write_jsonl(root / "sft.jsonl", [sft_record(t, "slow") for t in pool + held])
    train(TrainConfig(out_dir=str(root / "teacher"), mode="sft", data=str(root / "sft.jsonl"),
                      tokenizer=str(tiny_tokenizer_dir), seq_len=128, global_batch_size=14, micro_batch_size=14,
                      max_steps=150, save_every=10, keep_last=20, lr=1e-2, warmup_steps=5, progress=False,
                      threads=1))
    return root


def config(setup, out, **kw) -> DistillConfig:
    base = dict(out_dir=str(out), teacher=str(setup / "teacher"), student=str(setup / "teacher" / "step-000080"),
                prompts=str(setup / "tasks.jsonl"), eval_data=str(setup / "heldout.jsonl"), iterations=2,
                prompts_per_iteration=6, teacher_samples=4, student_samples=4, max_new_tokens=64, batch_size=8,
                select_size=3, mix={"easy": 1, "medium": 1, "hard": 1}, drop_solved=False, drop_unsolved=False,
                sft={"max_steps": 4, "save_every": 2, "seq_len": 128, "global_batch_size": 3, "micro_batch_size": 3,
                     "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 1},
                merge_checkpoints=2, progress=False, threads=1)
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def straight(setup):
    from duomind.distill.loop import distill

    out = setup / "straight"
    return out, distill(config(setup, out))


def test_iterations_write_reports_and_drop_near_duplicates(straight):
    out, report = straight
    assert len(report["accuracy_by_iteration"]) == 3  # the starting student, then two iterations
    assert all(0.0 <= a <= 1.0 for a in report["accuracy_by_iteration"])
    for t in (1, 2):
        it = out / f"iter-{t}"
        row = json.loads((it / "report.json").read_text())
        assert row["iteration"] == t and (it / "report.png").stat().st_size > 1000
        assert set(row["eval"]["by_difficulty"]) == {"1"}
        assert row["selected"]["n"] == 3
        assert set(row["seconds"]) >= {"prompts", "teacher", "difficulty", "select", "sft", "merge", "eval"}
    assert (out / "report.png").stat().st_size > 1000
    dedup_1 = json.loads((out / "iter-1" / "dedup.json").read_text())
    dedup_2 = json.loads((out / "iter-2" / "dedup.json").read_text())
    assert dedup_1["considered"] == dedup_2["considered"] == 6
    # over the 12-prompt pool exactly one rephrased duplicate and one held-out copy exist
    dropped = {k: dedup_1[k] + dedup_2[k] for k in ("near_eval", "near_each_other", "near_earlier_iterations")}
    assert dropped["near_eval"] == 1 and dropped["near_each_other"] + dropped["near_earlier_iterations"] == 1


def test_selected_responses_are_the_shortest_correct_teacher_responses(straight, tiny_tokenizer):
    from duomind.distill.loop import read_rows
    from duomind.rewards.format import split_think
    from duomind.tasks import check_answer

    out, _ = straight
    for t in (1, 2):
        teacher = {r["key"]: r for r in read_rows(out / f"iter-{t}" / "teacher.jsonl")}
        difficulty_keys = {r["key"] for r in json.loads((out / f"iter-{t}" / "difficulty.json").read_text())}
        for row in read_rows(out / f"iter-{t}" / "selected.jsonl"):
            src = teacher[row["key"]]
            answer = split_think(row["response"])[1].strip()
            assert check_answer(row["task"], answer)  # the verifier's verdict holds up
            lengths = [len(tiny_tokenizer.encode(x, add_special_tokens=False))
                       for x, ok in zip(src["responses"], src["correct"]) if ok]
            assert row["tokens"] == min(lengths)
            assert row["key"] in difficulty_keys and row["bin"] == bin_of(row["difficulty"])
        sft = read_rows(out / f"iter-{t}" / "sft.jsonl")
        assert all(r["mode"] == "slow" and r["messages"][1]["content"].startswith("<think>") for r in sft)


def test_merge_is_the_mean_of_the_iterations_checkpoints(straight):
    out, _ = straight
    state = json.loads((out / "state.json").read_text())
    for t in (1, 2):
        prev = load_file(str(_weights(state["student"][str(t - 1)])))
        merged = load_file(str(_weights(state["student"][str(t)])))
        ckpts = sorted((out / f"iter-{t}" / "sft-0").glob("step-*"))
        assert [p.name for p in ckpts] == ["step-000002", "step-000004"]
        tensors = [load_file(str(p / "model.safetensors")) for p in ckpts]
        for name, value in merged.items():
            expect = prev[name] + sum(x[name] - prev[name] for x in tensors) / 2
            assert torch.allclose(value, expect, atol=1e-6), name


def _weights(path):
    from pathlib import Path

    return Path(path) / "model.safetensors"


def test_interrupted_run_resumes_where_it_stopped_and_matches(setup, straight, monkeypatch):
    from duomind.distill import loop

    out = setup / "resumed"
    calls = {"armed": False, "n": 0}
    real_check, real_teacher = loop.Verifier.check, loop._stage_teacher

    def teacher_stage(cfg, t, *args):
        calls["armed"] = t == 2
        return real_teacher(cfg, t, *args)

    def flaky(self, records):
        calls["n"] += calls["armed"]
        if calls["n"] == 2:  # inside iteration 2's teacher sampling, after its first chunk was saved
            raise KeyboardInterrupt
        return real_check(self, records)

    monkeypatch.setattr(loop.Verifier, "check", flaky)
    monkeypatch.setattr(loop, "_stage_teacher", teacher_stage)
    with pytest.raises(KeyboardInterrupt):
        loop.distill(config(setup, out))
    monkeypatch.setattr(loop, "_stage_teacher", real_teacher)
    state = json.loads((out / "state.json").read_text())
    assert "report" in state["done"]["1"] and "teacher" not in state["done"].get("2", [])
    assert (out / "iter-2" / "teacher.partial.jsonl").stat().st_size > 0
    monkeypatch.setattr(loop.Verifier, "check", real_check)
    stages = []
    for name in ("_stage_prompts", "_stage_teacher", "_stage_sft"):
        real = getattr(loop, name)
        monkeypatch.setattr(loop, name, lambda *a, _real=real, _name=name, **k: (stages.append(_name), _real(*a, **k))[1])
    report = loop.distill(config(setup, out))
    assert stages == ["_stage_teacher", "_stage_sft"]  # iteration 1 and iteration 2's prompts were not redone
    straight_out, straight_report = straight
    assert report["accuracy_by_iteration"] == straight_report["accuracy_by_iteration"]
    assert (out / "iter-2" / "teacher.jsonl").read_text() == (straight_out / "iter-2" / "teacher.jsonl").read_text()
    a = load_file(str(out / "iter-2" / "student" / "model.safetensors"))
    b = load_file(str(straight_out / "iter-2" / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config(setup, straight):
    from duomind.distill.loop import distill

    out = setup / "changed"
    shutil.copytree(straight[0], out)
    with pytest.raises(ConfigError, match="teacher_samples"):
        distill(config(setup, out, teacher_samples=2))
    # more iterations is a legal change: nothing done is redone, and a third iteration would follow
    assert json.loads((out / "state.json").read_text())["done"]["2"][-1] == "report"


def test_random_selection_without_merging(setup):
    from duomind.distill.loop import distill

    out = setup / "random"
    report = distill(config(setup, out, selection="random", merge=False, select_size=[3, 0]))
    assert not (out / "iter-1" / "difficulty.json").exists()  # random selection needs no student sampling
    assert report["iterations"][1]["selected"]["n"] == 3 and report["iterations"][1]["merge"] is None
    state = json.loads((out / "state.json").read_text())
    assert state["student"]["1"].endswith("sft-0/step-000004")
    # an iteration that selects nothing trains nothing: the student is carried forward and the report says so
    assert report["iterations"][2]["selected"]["n"] == 0 and report["iterations"][2]["trained"] is False
    assert state["student"]["2"] == state["student"]["1"] and not (out / "iter-2" / "sft-0").exists()
    assert report["accuracy_by_iteration"][2] == report["accuracy_by_iteration"][1]


def test_cli_reads_a_recipe_and_flags():
    from pathlib import Path

    from duomind.cli import main

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "distill" / "bench.yaml"
    # parsing reaches DistillConfig (flags override the recipe), whose validation names the bad field
    with pytest.raises(SystemExit, match="iterations must be a positive integer"):
        main(["distill", "--config", str(recipe), "--iterations", "0"])
    with pytest.raises(SystemExit, match="selection"):
        main(["distill", "--config", str(recipe), "--selection", "hardest"])


def test_sampling_resumes_after_a_torn_chunk_line(setup, tmp_path):
    from duomind.distill.loop import Verifier, load_any, sample_chunked
    from duomind.tasks import read_tasks
    from duomind.tokenizer import load_tokenizer

    model, ckpt = load_any(str(setup / "teacher"))
    tok, tasks = load_tokenizer(ckpt), read_tasks(setup / "tasks.jsonl")[:4]
    verifier = Verifier()
    args = (model, tok, tasks, "slow", 2, 0.8, None, 64, 4, 7)
    whole = sample_chunked(*args, tmp_path / "a.jsonl", verifier, lambda n: None)
    first = (tmp_path / "a.jsonl").read_text().splitlines()[0]
    (tmp_path / "b.jsonl").write_text(first + "\n" + '{"chunk": 1, "rows": [{"respon')  # killed mid-write
    seen = []
    resumed = sample_chunked(*args, tmp_path / "b.jsonl", verifier, seen.append)
    assert resumed == whole and seen == [2, 2]  # chunk 0 restored, chunk 1 sampled again, identically
    assert [json.loads(x)["chunk"] for x in (tmp_path / "b.jsonl").read_text().splitlines()] == [0, 1]
