"""Medical app scoring: choice and premise parsing, the four-score judge rubric, text metrics, reports, CLI."""

from __future__ import annotations

import json

import pytest

from duomind.apps.medical import synth
from duomind.apps.medical.backends import Reply
from duomind.apps.medical.data import DataProblems, Item, load_items
from duomind.apps.medical.eval import (
    evaluate,
    judge_items,
    parse_choice,
    parse_rubric,
    rejects_premise,
    score,
    text_metrics,
    write_report,
)

OPTS = {"A": "it grew", "B": "it shrank", "C": "it appeared", "D": "it resolved"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.write_dataset(tmp_path_factory.mktemp("med_eval"), n_per_ability=6, captions=0)


@pytest.mark.parametrize("text,want", [
    ("B", "B"), ("B. it shrank", "B"), ("(C) it appeared", "C"), ("[D]", "D"), ("The answer is A.", "A"),
    ("Option: C", "C"), ("I think it resolved over time", "D"), ("it shrank", "B"), ("", None), (None, None),
    ("Both grew and shrank", None), ("Because of noise", None),
])
def test_parse_choice(text, want):
    assert parse_choice(text, OPTS) == want


@pytest.mark.parametrize("text,want", [
    ("False premise: the scan shows no lesion.", True), ("There is no lesion in the upper left.", True),
    ("The premise is incorrect; the lesion is small.", True), ("No such lesion is visible.", True),
    ("It is bright.", False), ("It is dark.", False), ("", False), (None, False),
])
def test_rejects_premise(text, want):
    assert rejects_premise(text) is want


@pytest.mark.parametrize("text,want", [
    ("8 7 6 9", (8, 7, 6, 9)), ("Scores: 8, 7, 6, 10", (8, 7, 6, 10)), ("reasoning first\n3/4/5/6", (3, 4, 5, 6)),
    ("Clinical accuracy: 8\nClinical relevance: 7/10\nDetail level: 6\nRisk level: 9", (8, 7, 6, 9)),
    ("8 7 6", None), ("8 7 6 9 5", None), ("0 7 6 9", None), ("8 7 6 11", None), ("Looks good!", None),
    ("", None), (None, None), ("Clinical accuracy: 8, relevance 7, detail 6", None),
    ("accuracy 8 relevance 7 detail 6.5 risk 9", None),
])
def test_parse_rubric_never_guesses(text, want):
    got = parse_rubric(text)
    assert (tuple(got.values()) if got else None) == want


def test_an_oracle_scores_perfectly_and_a_silent_backend_scores_zero(data):
    items = load_items(data["medmim"]) + load_items(data["medhall"])
    report, _ = evaluate(items, lambda its: [Reply(it.answer) for it in its])
    assert report["closed"]["accuracy"] == 1.0 and set(report["closed"]["accuracy_by_ability"]) == set(synth.ABILITIES)
    h = report["hallucination"]
    assert h["negative_accuracy"] == h["positive_accuracy"] == h["negative_correction_exact"] == 1.0
    assert report["text"]["open"]["rouge_l"] == pytest.approx(1.0) and report["text"]["negative"]["bleu"] == pytest.approx(1.0)
    assert report["n_failed"] == 0
    # every item fails: all closed answers wrong, no negative rejected, every failure listed with its reason
    down, _ = evaluate(items, lambda its: [Reply(None, "timed out after 60 s") for _ in its])
    assert down["closed"]["accuracy"] == 0.0 and down["hallucination"]["negative_accuracy"] == 0.0
    assert down["n_failed"] == len(items) and {f["error"] for f in down["failures"]} == {"timed out after 60 s"}
    assert down["text"]["open"]["n"] == 0 and down["text"]["open"]["rouge_l"] is None


def test_accuracy_per_ability_counts_what_it_should():
    def item(i, ability, answer):
        return Item(id=str(i), images=[], prompt="Q A. x B. y C. z D. w", answer=answer, ability=ability,
                    kind="closed", options={"A": "x", "B": "y", "C": "z", "D": "w"})

    items = [item(0, "temporal", "A. x"), item(1, "temporal", "B. y"), item(2, "comparison", "C. z"),
             item(3, "comparison", "D. w")]
    replies = [Reply("A"), Reply("gibberish"), Reply("C. z"), Reply(None, "HTTP 500")]
    r = score(items, replies)
    assert r["closed"]["accuracy_by_ability"] == {"comparison": 0.5, "temporal": 0.5}
    assert r["closed"]["unparsed_replies"] == 1 and r["n_failed"] == 1


def test_judge_failures_are_recorded_never_scored(data):
    items = load_items(data["medhall"])[:4]
    replies = ["8 8 8 8", "garbage", None, "Scores: 2 3 4 5"]
    judged = judge_items(items, ["ans"] * 4, lambda prompts: replies)
    assert [("scores" in j) for j in judged] == [True, False, False, True]
    assert "no four" in judged[1]["error"] and "timeout" in judged[2]["error"]

    def broken(prompts):
        raise ConnectionError("judge is down")

    assert all("judge is down" in j["error"] for j in judge_items(items, ["a"] * 4, broken))
    r = score(items, [Reply("ans")] * 4, judged)
    assert r["judge"]["n_scored"] == 2 and r["judge"]["n_failed"] == 2
    assert r["judge"]["all"]["clinical_accuracy"] == 5.0  # mean of 8 and 2 only
    assert sum(f["stage"] == "judge" for f in r["failures"]) == 2
    with pytest.raises(ValueError, match="returned 1 replies for 4"):
        judge_items(items, ["a"] * 4, lambda p: ["1 1 1 1"])


def test_judge_prompt_has_caption_ground_truth_and_an_example(data):
    seen = []
    items = load_items(data["medhall"])[:1]
    judge_items(items, ["It is dark."], lambda p: seen.extend(p) or ["5 5 5 5"])
    assert "Example." in seen[0] and "Scores: 3 6 3 4" in seen[0]
    assert f"Ground truth: {items[0].answer}" in seen[0] and items[0].caption in seen[0]
    assert seen[0].rstrip().endswith("Answer: It is dark.\nScores:")


def test_text_metrics_order_answers_sensibly():
    refs = ["It grew from small to large.", "False premise: the scan shows no lesion."]
    same = text_metrics(refs, refs)
    close = text_metrics(["It grew from small to medium.", "False premise: the scan shows a lesion."], refs)
    far = text_metrics(["Bright.", "Yes."], refs)
    assert same["rouge_l"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(1.0)
    assert same["rouge_l"] > close["rouge_l"] > far["rouge_l"] and same["bleu"] > close["bleu"] > far["bleu"]


def test_report_files_and_eval_cli_on_bad_data(data, tmp_path):
    from duomind.apps.medical.cli import eval_cli

    items = load_items(data["medhall"])
    report = score(items, [Reply(it.answer) for it in items], [{"scores": dict.fromkeys(
        ("clinical_accuracy", "clinical_relevance", "detail_level", "risk_level"), 7)}] * len(items))
    paths = write_report(report, tmp_path / "rep")
    assert json.loads(paths["json"].read_text())["judge"]["positive"]["risk_level"] == 7.0
    assert "| negative |" in paths["md"].read_text() and paths["png"].stat().st_size > 1000
    recs = json.loads(data["medmim"].read_text())[:3]
    recs[1]["images"] = recs[1]["images"] + ["missing.png"]
    bad = data["medmim"].parent / "bad.json"
    bad.write_text(json.dumps(recs))
    with pytest.raises(DataProblems, match="does not exist"):
        eval_cli(str(bad), model="http://127.0.0.1:9/v1", out=str(tmp_path / "x"))
    # recorded instead: the broken item fails with its reason, the others go to the (unreachable) endpoint
    rep = eval_cli(str(bad), model="http://127.0.0.1:9/v1", out=str(tmp_path / "y"), skip_invalid=True, timeout_s=0.2)
    errors = {f["id"]: f["error"] for f in rep["failures"]}
    assert "placeholder" in errors[recs[1]["id"]] and "connection error" in errors[recs[0]["id"]]
    assert (tmp_path / "y" / "predictions-bad.json").is_file()
