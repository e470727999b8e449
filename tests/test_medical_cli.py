"""`duomind med synth | validate | train | eval` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from duomind.cli import main


def test_med_verbs_end_to_end(tmp_path, capsys):
    d = tmp_path / "data"
    assert main(["med", "synth", str(d), "--n_per_ability", "3", "--captions", "4", "--tsv", "true"]) == 0
    assert {p.name for p in d.iterdir()} >= {"medmim.json", "medhall.jsonl", "captions.json", "medmim.tsv", "images"}
    files = f"{d / 'medmim.json'},{d / 'medhall.jsonl'},{d / 'medmim.tsv'}"
    assert main(["med", "validate", files]) == 0
    run = tmp_path / "run"
    assert main(["med", "train", "--data", f"{d / 'medmim.json'},{d / 'captions.json'}", "--out_dir", str(run),
                 "--max_steps", "2", "--save_every", "2", "--decoder_preset", "tiny", "--vision_hidden", "16",
                 "--batch_size", "2", "--decoder", "{max_position_embeddings: 192}", "--progress", "false"]) == 0
    assert (run / "step-000002" / "COMPLETE").is_file()
    out = tmp_path / "eval"
    assert main(["med", "eval", f"{d / 'medmim.json'},{d / 'medhall.jsonl'}", "--model", str(run), "--out", str(out),
                 "--max_new_tokens", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_items"] == 12 + 6 and report["n_failed"] == 0
    assert set(report["closed"]["accuracy_by_ability"]) == {"temporal", "reasoning", "comparison", "co-reference"}
    assert (out / "predictions-medhall.jsonl").is_file() and (out / "report.png").is_file()
    capsys.readouterr()
    # a missing image: validate lists it and exits 1; eval refuses the data with the same message
    (d / "images" / "medmim-00001-0.png").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["med", "validate", str(d / "medmim.json")])
    assert exc.value.code == 1 and "medmim-00001-0.png' does not exist" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not exist"):
        main(["med", "eval", str(d / "medmim.json"), "--model", str(run)])
