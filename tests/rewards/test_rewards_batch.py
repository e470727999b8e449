"""Batch scoring: validation, worker pool parity, judge wiring, MARS in input order, the CLI verb."""

from __future__ import annotations

import json

import pytest

from duomind.cli import main
from duomind.rewards.batch import Scorer
from duomind.rewards.config import RewardConfig
from duomind.rewards.sandbox import Limits

CFG = RewardConfig(normalize=False, sandbox=Limits(wall_s=5))


def records() -> list[dict]:
    return [
        {"id": "m1", "task": "math", "prompt": "1/2?", "response": "<think>\nhalf\n</think>\n\n\\boxed{0.5}",
         "answer": "\\frac{1}{2}", "mode": "slow"},
        {"id": "m2", "task": "math", "prompt": "2+2?", "response": "<think></think>\\boxed{5}", "answer": "4",
         "mode": "fast"},
        {"id": "c1", "task": "code", "prompt": "sq", "response": "```python\ndef sq(x):\n    return x * x\n```",
         "tests": ["assert sq(3) == 9", "assert sq(2) == 5"]},
        {"id": "g1", "task": "general", "prompt": "Capital of France?", "response": "Paris.", "reference": "Paris"},
        {"id": "bad", "task": "poetry", "prompt": "", "response": ""},
    ]


def stub_judge(prompts):
    return ["Score: 9" if "Paris" in p.split("RESPONSE:")[1] else "Score: 1" for p in prompts]


def test_scores_every_task_and_reports_components():
    with Scorer(CFG, workers=0, complete=stub_judge) as scorer:
        out = {r["id"]: r for r in scorer.score(records())}
    m1, m2, c1, g1, bad = (out[k] for k in ("m1", "m2", "c1", "g1", "bad"))
    assert (m1["verdict"], m1["components"]["math"], m1["components"]["format"]) == ("ok", 1.0, 1.0)
    assert m1["reward"] == pytest.approx(1.0 + 0.2)
    assert (m2["verdict"], m2["components"]["format"]) == ("wrong_answer", 0.0)  # empty think tags in fast mode
    assert m2["detail"]["format"]["reason"].startswith("fast mode must not think")
    assert (c1["verdict"], c1["components"]["code"]) == ("wrong_answer", 0.5)
    assert [t["passed"] for t in c1["detail"]["code"]["tests"]] == [True, False]
    assert (g1["verdict"], g1["components"]["judge"]) == ("ok", pytest.approx(0.9))
    assert bad["verdict"] == "invalid" and "'task' must be one of" in bad["detail"]["error"]
    assert bad["reward"] == 0.0
    assert m1["detail"]["weights"] == {"math": 1.0, "format": 0.2, "repetition": 0.2}
    assert m1["prompt"] == "1/2?"  # the input record comes back whole


@pytest.mark.timeout(120)
def test_worker_pool_gives_the_same_results():
    recs = [r for r in records() if r["task"] != "general"] * 3
    with Scorer(RewardConfig(norm_warmup=2, sandbox=Limits(wall_s=5)), workers=0) as inline:
        a = inline.score(recs)
    with Scorer(RewardConfig(norm_warmup=2, sandbox=Limits(wall_s=5)), workers=2) as pooled:
        b = pooled.score(recs, progress=True)
    strip = [{k: v for k, v in r.items() if k != "detail"} for r in a], [{k: v for k, v in r.items() if k != "detail"}
                                                                           for r in b]
    assert strip[0] == strip[1]


def test_general_records_need_a_judge():
    with Scorer(CFG, workers=0) as scorer:
        with pytest.raises(ValueError, match="need the LLM judge"):
            scorer.score(records())


def test_unknown_source_in_weights_is_a_clear_error():
    cfg = RewardConfig(weights={"math": {"math": 1.0, "vibes": 1.0}, "code": {}, "general": {}})
    with Scorer(cfg, workers=0) as scorer:
        with pytest.raises(ValueError, match="unknown reward source"):
            scorer.score(records()[:1])


def test_cli_score_end_to_end(tmp_path, capsys):
    src, dst, stats = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "stats.json"
    src.write_text("\n".join(json.dumps(r) for r in records() if r["task"] != "general") + "\n")
    main(["reward", "score", str(src), str(dst), "--workers", "0", "--stats", str(stats), "--progress", "false",
          "--rewards.sandbox.wall_s", "5"])
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in out] == ["m1", "m2", "c1", "bad"]
    assert [r["verdict"] for r in out] == ["ok", "wrong_answer", "wrong_answer", "invalid"]
    assert "math/math" in json.loads(stats.read_text())
    assert "4 records" in capsys.readouterr().out


def test_cli_reports_malformed_json(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1}\n{not json\n')
    with pytest.raises(SystemExit, match="in.jsonl:2: not valid JSON"):
        main(["reward", "score", str(src), str(tmp_path / "out.jsonl"), "--workers", "0"])


def test_cli_lists_the_reward_verbs(capsys):
    main(["--help"])
    text = capsys.readouterr().out
    assert "reward score" in text and "reward serve" in text


@pytest.mark.parametrize("verb", ["score", "serve"])
def test_recipe_is_valid_for_both_verbs(verb, capsys):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "rewards-mars.yaml"
    args = ["IN", "OUT"] if verb == "score" else []
    with pytest.raises(SystemExit) as done:  # --print_config prints the parsed config and exits 0
        main(["reward", verb, *args, "--config", str(recipe), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "judge:" in printed and "backend: http" in printed
