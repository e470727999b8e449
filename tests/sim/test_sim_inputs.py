"""Simulator inputs: hardware profiles with sources, model shapes from presets / files / config.json, plans."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from duomind.config import ModelConfig
from duomind.sim.arch import Arch, ArchError, from_hf_config, load_arch
from duomind.sim.hardware import PROFILES, Hardware, UnknownHardwareError, get_hardware, interp_log, register
from duomind.sim.plan import Plan, PlanError, load_plan
from duomind.sim.presets import MODELS

NUMBERS = ("peak_flops", "mem_bw", "mem_bytes", "intra_bw", "inter_bw", "matmul_eff")


def test_no_torch_import_anywhere_in_sim():
    code = ("import sys, duomind.sim, duomind.sim.arch, duomind.sim.hardware, duomind.sim.plan, duomind.sim.presets, "
            "duomind.sim.routing, duomind.sim.workload, duomind.sim.simulate, duomind.sim.search, duomind.sim.report, "
            "duomind.sim.cli, duomind.sim.calibrate\n"
            "from duomind.sim.simulate import simulate_train\n"
            "simulate_train('llama3-8b', {'dp': 8}, 'h100')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["910b", "800i-a2", "300i-duo", "a100", "h100", "h200"])
def test_every_profile_number_has_a_source(name):
    hw = get_hardware(name)
    for field in NUMBERS:
        assert hw.sources.get(field), f"{name}.{field} has no source"
    assert hw.set_by
    assert hw.peak("bf16") > 1e13 and hw.mem_bytes > 1e10


def test_registry_rejects_duplicates_and_unknown_names_list_known_ones():
    with pytest.raises(ValueError, match="already registered"):
        register(PROFILES["h100"])
    with pytest.raises(UnknownHardwareError) as err:
        get_hardware("tpu-v9")
    for known in ("910b", "800i-a2", "300i-duo", "a100", "h100", "h200", "local"):
        assert known in str(err.value)


def test_local_profile_missing_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DUOMIND_SIM_LOCAL", str(tmp_path / "none.json"))
    with pytest.raises(UnknownHardwareError, match="duomind sim calibrate"):
        get_hardware("local")


def test_profile_file_round_trip(tmp_path):
    hw = get_hardware("h100")
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({**hw.to_dict(), "name": "my-gpu", "mem_bytes": 40e9}))
    mine = get_hardware(str(path))
    assert mine.name == "my-gpu" and mine.mem_bytes == 40e9 and mine.peak_flops == hw.peak_flops
    with pytest.raises(ValueError, match="unknown field"):
        Hardware.from_dict({**hw.to_dict(), "bogus": 1})


def test_interp_log_clamps_and_interpolates():
    pts = ((1e3, 10.0), (1e5, 30.0))
    assert interp_log(pts, 1.0) == 10.0 and interp_log(pts, 1e9) == 30.0
    assert interp_log(pts, 1e4) == pytest.approx(20.0)


def test_working_set_caps_only_calibrated_profiles():
    gpu = get_hardware("h100")
    assert gpu.for_working_set(1e12) is gpu
    cpu = Hardware(name="cpu", peak_flops={"fp32": 1e11}, mem_bw=1e11, mem_bytes=1e10, intra_bw=1, inter_bw=1,
                   node_size=1, mem_curve=((1e3, 5e10), (1e9, 5e10)), stream_curve=((1e6, 4e10), (1e9, 5e9)))
    assert cpu.bytes_rate(1e6) == 5e10
    assert cpu.for_working_set(1e9).bytes_rate(1e6) == 5e9  # a DRAM-sized working set streams at DRAM speed


def test_dense_param_count_matches_duomind_config():
    for preset in ("tiny", "demo", "base-20m"):
        cfg = ModelConfig.from_preset(preset)
        arch = load_arch(cfg.to_dict())
        assert arch.params()["total"] == cfg.num_parameters()


def test_published_model_sizes():
    pro = MODELS["pangu-pro-moe-72b"].params()
    assert pro["total"] == pytest.approx(72e9, rel=0.01) and pro["active"] == pytest.approx(16.5e9, rel=0.02)
    ultra = MODELS["pangu-ultra-moe-718b"].params()
    assert ultra["total"] - ultra["mtp"] == pytest.approx(718e9, rel=0.01)
    assert MODELS["pangu-ultra-135b"].params()["total"] == pytest.approx(135e9, rel=0.02)
    assert MODELS["gpt3-175b"].params()["total"] == pytest.approx(175e9, rel=0.01)


def test_hf_configs_map_onto_arch(tmp_path):
    llama = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336}
    a = from_hf_config(llama)
    assert (a.mlp, a.attention, a.num_kv_heads, a.head_dim) == ("dense", "gqa", 8, 128)
    mixtral = {**llama, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
    m = from_hf_config(mixtral)
    assert (m.mlp, m.num_experts, m.top_k, m.expert_size) == ("moe", 8, 2, 14336)
    qwen_moe = {**llama, "model_type": "qwen2_moe", "num_experts": 60, "num_experts_per_tok": 4,
                "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632}
    q = from_hf_config(qwen_moe)
    assert (q.num_experts, q.num_shared_experts, q.shared_expert_size) == (60, 1, 5632)
    ds = {**llama, "model_type": "deepseek_v3", "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
          "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256, "num_experts_per_tok": 8,
          "moe_intermediate_size": 2048, "n_shared_experts": 1, "first_k_dense_replace": 3}
    d = from_hf_config(ds)
    assert (d.attention, d.mlp, d.first_dense_layers, d.kv_lora_rank) == ("mla", "moe", 3, 512)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(llama))
    assert load_arch(tmp_path / "ckpt").hidden_size == 4096  # a checkpoint directory reads its config.json


def test_model_files_and_bad_models(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("hidden_size: 1024\nnum_layers: 4\nnum_heads: 8\nnum_kv_heads: 8\nvocab_size: 1000\n")
    assert load_arch(path).name == "m"
    path.write_text("hidden_size: 1024\nnum_layerz: 4\n")
    with pytest.raises(ArchError, match="num_layerz"):
        load_arch(path)
    with pytest.raises(ArchError, match="not a preset"):
        load_arch("no-such-model")
    with pytest.raises(ArchError, match="MoGE needs num_groups"):
        Arch(mlp="moge", num_experts=64, top_k=8, num_groups=3, expert_size=128)
    with pytest.raises(ArchError, match="must divide num_heads"):
        Arch(num_heads=32, num_kv_heads=6)


def test_plan_files_and_overrides(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("plan:\n  tp: 4\n  pp: 2\n  overlap: dp,tp\n")
    p = load_plan(path, pp=4, dp=None)
    assert (p.tp, p.pp, p.dp, p.overlap) == (4, 4, 1, ("dp", "tp"))
    with pytest.raises(PlanError, match="unknown plan field"):
        load_plan({"tpp": 2})


def test_impossible_plans_list_every_reason():
    arch = MODELS["llama3-8b"]
    reasons = Plan(tp=3, pp=5).problems(arch)
    assert any("TP 3 does not divide the 32 attention heads" in r for r in reasons)
    assert any("does not divide the 32 layers" in r for r in reasons)
    assert not Plan(tp=4, pp=5, pp_layout="balanced").problems(arch)  # an uneven split is allowed when asked for
    assert any("needs an MoE" in r for r in Plan(ep=2, dp=2).problems(arch))
    assert any("does not divide the 64 experts" in r
               for r in Plan(ep=3, dp=3).problems(MODELS["pangu-pro-moe-72b"]))
    assert any("vpp > 1" in r for r in Plan(vpp=2).problems(arch))
    assert any("training only" in r for r in Plan(cp=2).problems(arch, "infer"))
    assert any("CP 3 does not divide seq_len" in r for r in Plan(cp=3, seq_len=4096).problems(arch))
