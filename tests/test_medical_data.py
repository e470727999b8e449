"""Medical app, data side: synthetic scans with exact answers, the three readers, validation, writers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from duomind.apps.medical import synth
from duomind.apps.medical.data import (
    DataProblems,
    load,
    load_image,
    load_items,
    validate_cli,
    write_medmim,
    write_predictions,
    write_tsv,
)

SIZE_RANK = {s: i for i, s in enumerate(synth.SIZES)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("med_data")
    return synth.write_dataset(out, n_per_ability=8, captions=4, tsv=True)


def _recompute(q: synth.Question) -> str:
    """The answer of a closed question, worked out again from its scans alone."""
    text = q.prompt
    if q.ability == "temporal":
        quad = next(x for x in synth.QUADRANTS if f"lesion in the {x}" in text)
        first, last = q.scans[0].lesions.get(quad), q.scans[-1].lesions.get(quad)
        if first is None:
            return "it appeared"
        if last is None:
            return "it resolved"
        return "it grew" if SIZE_RANK[last.size] > SIZE_RANK[first.size] else "it shrank"
    if q.ability == "reasoning":
        seen = {les.intensity for s in q.scans for les in s.lesions.values()}
        return {frozenset(): "no finding", frozenset({"bright"}): "cyst", frozenset({"dark"}): "tumour"}.get(
            frozenset(seen), "cyst and tumour")
    if q.ability == "comparison":
        sizes = [max((SIZE_RANK[les.size] for les in s.lesions.values()), default=None) for s in q.scans]
        if sizes == [None, None]:
            return "neither has a lesion"
        a, b = (-1 if s is None else s for s in sizes)
        return "the first" if a > b else "the second" if b > a else "both the same size"
    k = next(i for i, o in enumerate(synth.ORDINALS) if f"In the {o} image" in text)
    return next(iter(q.scans[k].lesions))


def test_every_closed_answer_follows_from_the_scans():
    qs = synth.make_questions(60, seed=5, open_fraction=0.0)["medmim"]
    assert {q.ability for q in qs} == set(synth.ABILITIES)
    for q in qs:
        assert q.prompt.count("<image>") == len(q.scans)
        assert q.answer == f"{synth.LETTERS[list(q.options.values()).index(_recompute(q))]}. {_recompute(q)}"
    # answers are balanced over the options, so chance is 1/4
    letters = [q.answer[0] for q in qs]
    assert min(letters.count(x) for x in "ABCD") >= len(qs) // 10


def test_premise_questions_are_true_or_false_as_labelled():
    qs = synth.make_questions(1, seed=3, n_premise=200)["medhall"]
    assert {q.polarity for q in qs} == {"positive", "negative"}
    assert {q.premise for q in qs if q.polarity == "negative"} == set(synth.PREMISES)
    for q in qs:
        lesions = q.scans[0].lesions
        quad = next(x for x in synth.QUADRANTS if f"in the {x}." in q.prompt or f"in the {x}," in q.prompt
                    or f"one in the {x}" in q.prompt)
        claimed_count = next((i for i, w in enumerate(synth.NUMBERS) if f"shows {w} lesion" in q.prompt), None)
        claimed_size = next((s for s in synth.SIZES if f"a {s} lesion" in q.prompt), None)
        true = (quad in lesions and (claimed_size is None or lesions[quad].size == claimed_size)
                and (claimed_count is None or claimed_count == len(lesions)))
        assert true == (q.polarity == "positive"), q.prompt
        if q.polarity == "negative":
            assert q.answer.startswith(synth.REJECT)
        else:
            assert q.answer == f"It is {lesions[quad].intensity}."


def test_rendered_lesions_have_their_intensity():
    scan = synth.Scan({"upper left": synth.Lesion("large", "bright", "smooth"),
                       "lower right": synth.Lesion("large", "dark", "smooth")})
    img = synth.render(scan, 32, np.random.default_rng(0))
    assert img.shape == (32, 32) and img.dtype == np.uint8
    assert img[9, 9] > 200 and img[22, 22] < 40  # lesion centres at 0.3 / 0.7 of the side
    assert 50 < img[9, 22] < 130  # organ tissue where there is no lesion


def test_three_formats_read_back_without_problems(dataset):
    for name, path in dataset.items():
        items, problems = load(path)
        assert problems == [] and items, name
    mim = load_items(dataset["medmim"])
    assert {it.ability for it in mim} == set(synth.ABILITIES)
    assert all(it.kind == "closed" for it in mim if it.options)
    hall = load_items(dataset["medhall"])
    assert {it.polarity for it in hall} == {"positive", "negative"} and all(it.caption for it in hall)
    tsv = load_items(dataset["tsv"])
    closed = [it for it in mim if it.kind == "closed"]
    assert [it.prompt for it in tsv] == [it.prompt for it in closed]
    assert [it.answer for it in tsv] == [it.answer[0] for it in closed]
    # base64 images decode to the same pixels as the PNG files
    assert np.array_equal(np.asarray(load_image(tsv[0].images[1])), np.asarray(load_image(closed[0].images[1])))


def test_medhalltune_text_without_placeholder_gets_one(tmp_path, dataset):
    img = load_items(dataset["medhall"])[0].images[0]
    (tmp_path / "m.jsonl").write_text(json.dumps({"question_id": 7, "image": img, "text": "Is it bright?",
                                                  "gpt4_answer": "Yes.", "fig_caption": "c"}) + "\n")
    (item,) = load_items(tmp_path / "m.jsonl")
    assert item.prompt == "<image>Is it bright?" and item.answer == "Yes." and item.id == "7"


def _bad_medmim(tmp_path, good_image):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    recs = [
        {"id": "ok", "images": [good_image], "conversation": [{"role": "user", "content": "<image>Q"},
                                                              {"role": "assistant", "content": "A"}]},
        {"id": "missing", "images": ["nope.png"], "conversation": [{"role": "user", "content": "<image>Q"}]},
        {"id": "broken", "images": ["broken.png"], "conversation": [{"role": "user", "content": "<image>Q"}]},
        {"id": "count", "images": [good_image, good_image],
         "conversation": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]},
        {"id": "noturns", "images": [], "conversation": []},
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recs))
    return path


def test_validate_lists_every_problem_and_exits_nonzero(tmp_path, dataset, capsys):
    path = _bad_medmim(tmp_path, load_items(dataset["medmim"])[0].images[0])
    items, problems = load(path)
    text = "\n".join(map(str, problems))
    assert len(problems) == 4
    assert "missing" in text and "nope.png' does not exist" in text
    assert "broken" in text and "cannot be read" in text
    assert "1 <image> placeholder(s) for 2 image(s)" in text
    assert "no user turn" in text
    with pytest.raises(SystemExit) as exc:
        validate_cli(str(path))
    assert exc.value.code == 1
    assert capsys.readouterr().out.count(str(path)) >= 5  # each problem names the file
    with pytest.raises(DataProblems, match="4 problem"):
        load_items(path)
    validate_cli(str(dataset["medmim"]))  # clean data: no exit


def test_bad_json_and_bad_base64_are_named(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"question_id": 1, "image": "a.png", "text": "q"}\nnot json\n')
    _, problems = load(tmp_path / "x.jsonl")
    assert any(":2: not valid JSON" in str(p) for p in problems) and any("a.png" in str(p) for p in problems)
    (tmp_path / "x.tsv").write_text("index\timage\tquestion\tanswer\n0\t@@notbase64@@\tWhat?\tA\n")
    _, problems = load(tmp_path / "x.tsv")
    assert len(problems) == 1 and "base64" in str(problems[0])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unknown format"):
        load(tmp_path / "x.csv")


def test_prediction_writers_keep_each_format(tmp_path, dataset):
    rng = random.Random(0)
    for name in ("medmim", "medhall", "tsv"):
        items = load_items(dataset[name])
        preds = [rng.choice(["A", "It is dark.", None]) for _ in items]
        path = write_predictions(items, preds, tmp_path / f"pred-{dataset[name].name}")
        if name == "medmim":
            assert [r.get("prediction") for r in json.loads(path.read_text())] == preds
        elif name == "medhall":
            rows = [json.loads(x) for x in path.read_text().splitlines()]
            assert [r["answer"] for r in rows] == preds
            assert set(rows[0]) == {"question_id", "image", "question", "answer"}
        else:
            assert load_items(path)[0].prompt == items[0].prompt
    # in-memory (TSV) images cannot be written as paths: a clear error
    with pytest.raises(ValueError, match="write it as TSV"):
        write_medmim(load_items(dataset["tsv"])[:1], tmp_path / "y.json")
    assert write_tsv(load_items(dataset["tsv"])[:2], tmp_path / "z.tsv").stat().st_size > 100
