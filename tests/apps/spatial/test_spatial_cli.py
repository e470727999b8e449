"""`duomind spatial describe | ask | bench` end to end on a synthetic city, and the prompt templates."""

from __future__ import annotations

import json

import pytest

from duomind.apps.spatial.ask import TASKS, backend, build_prompt
from duomind.cli import main


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    d = tmp_path_factory.mktemp("spatial")
    main(["spatial", "describe", str(d / "city"), "--synthetic", "true", "--out", str(d / "ssd.json"),
          "--text", str(d / "ssd.txt"), "--budget", "800", "--plot", str(d / "map.png")])
    return d


def test_describe_writes_ssd_text_and_map(described):
    ssd = json.loads((described / "ssd.json").read_text())
    assert ssd["polygons"] and ssd["lines"] and ssd["points"]
    assert all(f["height_m"] is not None for f in ssd["polygons"] if f["fclass"] == "building")
    assert "left out" in (described / "ssd.txt").read_text()
    assert (described / "map.png").stat().st_size > 10_000


def test_describe_reads_several_inputs_like_one(described):
    city = described / "city"
    out = described / "osm.json"
    main(["spatial", "describe", f"{city / 'city.osm'},{city / 'pois.csv'}", "--cloud", str(city / "city.ply"),
          "--cloud_crs", json.loads((city / "truth.json").read_text())["crs"], "--out", str(out)])
    a, b = json.loads((described / "ssd.json").read_text()), json.loads(out.read_text())
    assert len(a["polygons"]) == len(b["polygons"]) and len(a["lines"]) == len(b["lines"])
    assert len(b["points"]) == 2 * len(a["points"])  # the CSV repeats the POIs of the .osm
    # (.osm lists multipolygon relations after the ways: compare by name, not position)
    assert {f["name"]: f["height_m"] for f in a["polygons"]} == {f["name"]: f["height_m"] for f in b["polygons"]}


def test_bench_with_the_rule_reader_answers_everything(described, capsys):
    out = described / "bench.json"
    main(["spatial", "bench", str(described / "ssd.json"), "--llm", "rule", "--per_category", "5", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["accuracy"] == 1.0 and result["n"] == 25
    main(["spatial", "bench", str(described / "ssd.json"), "--llm", "rule", "--per_category", "5",
          "--with_description", "false", "--out", str(out)])
    assert json.loads(out.read_text())["accuracy"] == 0.0  # nothing to read without the description


def test_ask_and_bench_errors_name_the_fix(described, tmp_path):
    with pytest.raises(SystemExit, match="--llm"):
        main(["spatial", "ask", str(described / "ssd.json"), "Where should a school go?"])
    with pytest.raises(SystemExit, match="spatial describe"):
        main(["spatial", "bench", str(tmp_path / "missing.json")])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        backend(str(tmp_path / "nope"))


def test_prompt_templates(described):
    ssd = json.loads((described / "ssd.json").read_text())
    name = ssd["points"][0]["name"]
    for task in TASKS:
        prompt, r = build_prompt(ssd, f"Is {name} a good place for a new clinic?", task=task, budget=500)
        assert TASKS[task] in prompt and r.included[0] == ssd["points"][0]["id"] and r.tokens <= 500
    with pytest.raises(ValueError, match="unknown task"):
        build_prompt(ssd, "?", task="poetry")
