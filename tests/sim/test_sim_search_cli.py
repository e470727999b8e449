"""Configuration search (constraints, Pareto front) and the `duomind sim ...` verbs."""

from __future__ import annotations

import json

import pytest

from duomind.cli import main
from duomind.sim.hardware import get_hardware
from duomind.sim.search import search

SPACE = {"num_layers": [40, 48], "num_experts": [32, 64, 128]}
PLAN = {"seq_len": 4096, "global_batch": 256, "router_skew": 0.5}


@pytest.fixture(scope="module")
def found():
    return search("pangu-pro-moe-72b", "910b", 32, "train", vary=SPACE, plan=PLAN,
                  degrees={"tp": [1, 2, 4], "pp": [1, 2, 4], "ep": [1, 2, 4, 8], "recompute": ["selective", "full"]},
                  max_total_params=110e9)


def test_search_respects_constraints_and_counts_rejections(found):
    assert found.models == 6 and found.models_rejected["total params above max_total_params"] == 2
    assert found.candidates and all(c.result.params["total"] <= 110e9 for c in found.candidates)
    assert all(c.result.devices == 32 for c in found.candidates)
    assert all(c.result.memory["total"] <= get_hardware("910b").mem_bytes for c in found.candidates)
    assert found.simulated + sum(v for k, v in found.rejected.items() if k != "memory overflow") == found.configs
    assert found.configs_per_second > 0


def test_front_is_the_set_of_undominated_models(found):
    front = {id(c) for c in found.front}
    for c in found.candidates:
        beaten = any(o.size >= c.size and o.result.tokens_per_s > c.result.tokens_per_s
                     or o.size > c.size and o.result.tokens_per_s >= c.result.tokens_per_s for o in found.candidates)
        assert beaten == (id(c) not in front)
    sizes = [c.size for c in found.front]
    speeds = [c.result.tokens_per_s for c in found.front]
    assert sizes == sorted(sizes) and speeds == sorted(speeds, reverse=True)


def test_each_model_keeps_its_fastest_plan(found):
    from duomind.sim.simulate import simulate_train

    best = found.candidates[0]
    for tp in (1, 2):
        try:
            other = simulate_train(best.arch, best.result.plan | {"tp": tp, "dp": 32 // (tp * best.result.plan["pp"])},
                                   "910b")
        except ValueError:
            continue
        assert other.tokens_per_s <= best.result.tokens_per_s * (1 + 1e-9)


def test_search_rejects_bad_spaces():
    with pytest.raises(ValueError, match="unknown model field"):
        search("llama3-8b", "h100", 8, vary={"layers": [1]})
    with pytest.raises(ValueError, match="cannot search"):
        search("llama3-8b", "h100", 8, degrees={"seq_len": [1024]})
    with pytest.raises(ValueError, match="mode"):
        search("llama3-8b", "h100", 8, mode="serve")


def test_no_feasible_configuration_is_said_plainly(capsys):
    main(["sim", "search", "--base", "llama3-70b", "--hardware", "h100", "--devices", "1",
          "--degrees", '{"tp": [1]}', "--plan", '{"seq_len": 4096}'])
    assert "no feasible configuration" in capsys.readouterr().out


def test_sim_train_json_and_plot(tmp_path, capsys):
    png = tmp_path / "b.png"
    main(["sim", "train", "llama3-8b", "--hardware", "h100", "--dp", "8", "--json", "true", "--plot", str(png)])
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is True and out["devices"] == 8
    assert sum(out["breakdown"].values()) == pytest.approx(out["step_time"])
    assert {"weights", "grads", "optimizer", "activations"} <= set(out["memory"])
    assert png.stat().st_size > 1000


def test_sim_train_text_report(capsys):
    main(["sim", "train", "gpt3-175b", "--hardware", "a100", "--tp", "8", "--pp", "8", "--seq_len", "2048",
          "--global_batch", "64"])
    text = capsys.readouterr().out
    assert "MFU" in text and "pp_bubble" in text and "memory per device" in text


def test_impossible_plan_gives_reasons_not_numbers(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sim", "train", "llama3-8b", "--tp", "3", "--json", "true"])
    assert exit_.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is False and any("TP 3 does not divide" in r for r in out["reasons"])
    assert "step_time" not in out
    with pytest.raises(SystemExit, match="does not divide the 32 layers"):
        main(["sim", "train", "llama3-8b", "--pp", "3"])
    with pytest.raises(SystemExit, match="memory overflow"):
        main(["sim", "infer", "llama3-70b", "--hardware", "a100", "--batch", "64"])


def test_unknown_hardware_lists_known_profiles():
    with pytest.raises(SystemExit, match="unknown hardware 'b200'; known: 300i-duo, 800i-a2, 910b, a100, h100, h200"):
        main(["sim", "infer", "llama3-8b", "--hardware", "b200"])


def test_sim_infer_reads_a_duomind_config_json(tmp_path, capsys):
    from duomind.config import ModelConfig

    (tmp_path / "config.json").write_text(json.dumps({**ModelConfig.from_preset("demo").to_dict(),
                                                      "model_type": "duomind"}))
    main(["sim", "infer", str(tmp_path), "--hardware", "h100", "--batch", "4", "--json", "true"])
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["total"] == ModelConfig.from_preset("demo").num_parameters()
    assert out["details"]["ttft_s"] > 0 and out["tokens_per_s"] == pytest.approx(4 / out["step_time"])


def test_sim_search_verb_prints_and_plots_front(tmp_path, capsys):
    png = tmp_path / "front.png"
    main(["sim", "search", "--base", "pangu-pro-moe-72b", "--hardware", "800i-a2", "--devices", "8", "--mode", "infer",
          "--vary", '{"num_layers": [40, 48]}', "--plan", '{"prompt_len": 1024, "gen_len": 256, "dtype": "int8"}',
          "--degrees", '{"tp": [1, 2, 4, 8], "ep": [1, 2, 4, 8], "batch": [32, 64]}', "--plot", str(png)])
    text = capsys.readouterr().out
    assert "Pareto front" in text and "batch" in text
    assert png.stat().st_size > 1000


def test_calibrate_writes_a_local_profile_the_simulator_uses(tmp_path, monkeypatch, capsys):
    path = tmp_path / "local.json"
    monkeypatch.setenv("DUOMIND_SIM_LOCAL", str(path))
    main(["sim", "calibrate", "--quick", "true"])
    hw = get_hardware("local")
    assert hw.eager and hw.matmul_curve and hw.stream_curve and hw.op_overhead > 0
    assert hw.sources["matmul_curve"].startswith("measured by `duomind sim calibrate`")
    capsys.readouterr()
    model = tmp_path / "small.yaml"
    model.write_text("vocab_size: 2048\nhidden_size: 256\nnum_layers: 4\nnum_heads: 4\nnum_kv_heads: 2\n")
    main(["sim", "train", str(model), "--hardware", "local", "--dtype", "fp32", "--seq_len", "128", "--micro_batch", "4",
          "--global_batch", "4", "--recompute", "none", "--json", "true"])
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"] == "local" and out["step_time"] > 0
