"""Each foundation benchmark runs in --quick mode (so it cannot rot) and writes well-formed results."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

KEYS = {
    "decode": ["speedup_vs_hf_batch1", "speedup_vs_hf_batch8", "greedy_outputs_equal", "overhead_ratio_vs_hf_batch1",
               "best_possible_speedup_batch1"],
    "train_throughput": ["speedup_vs_hf"],
    "dssn": ["variants", "dssn_tiny_spikes", "dssn_tiny_fewest_spikes", "final_loss_ratio_dssn_tiny_over_pre"],
    "rewards": ["math_checks_per_second", "code_programs_per_second", "math_verifier_accuracy",
                "math_verifier_failures", "code_isolation"],
    "moe_layer": ["speedup_vs_hf", "fraction_of_matmul_peak", "outputs_equal", "min_speedup_vs_hf_decode",
                  "best_possible_speedup_vs_hf"],
    "moe_balance": ["moge_max_is", "moe_mean_is", "loss_ratio_moge_over_moe"],
    "ep_step": ["step_time_ratio_moge_over_moe"],
    "sim_search": ["configs_per_second", "front", "simulated_per_run"],
    "sim_validation": ["local_median_abs_error", "published_median_abs_error", "published_blind_median_abs_error",
                       "moe_vs_moge"],
    "spatial": ["describe_seconds", "answerable_fraction", "accuracy_by_category", "accuracy_with_description",
                "accuracy_without_description", "finetune"],
    "medical": ["accuracy_by_ability", "single_image_accuracy_by_ability", "negative_accuracy", "mean_closed_accuracy",
                "multi_minus_single_by_ability", "min_margin_temporal_comparison", "goals", "setup"],
    "prune": ["loss_after_recovery", "speedup_decode", "pangu_light_beats_minitron_and_shortgpt", "models",
              "dssn_loss_after_recovery", "norm_scale"],
    "dual_mode": ["accuracy", "tokens", "accuracy_by_difficulty", "tokens_by_difficulty", "auto_accuracy_over_slow",
                  "auto_tokens_over_slow", "slow_minus_fast_hard", "auto_labels", "router_bounds", "label_sweep",
                  "goals_met"],
    "serve": ["tokens_per_s", "levels", "throughput_ratio_16_over_1", "throughput_ratio_4_over_1", "goal_met"],
    "distill": ["accuracy_by_iteration", "merge_balanced_at_or_above_others", "final_accuracy_merge_balanced",
                "merge_balanced_minus_best_other", "teacher_accuracy", "setup"],
    "rl_ssp": ["throughput_ratio_ssp1_over_sync", "throughput_ratio_ssp2_over_sync", "final_reward", "accuracy_before",
               "accuracy_after", "simulation_64_workers", "learner_idle_fraction", "curves"],
    "asr": ["cer", "cer_ctc", "mean_cer", "lid_accuracy", "rtf_ctc", "rtf_beam", "rtf_whisper_same_size", "goals_met"],
    "speculative": ["firp_speedup", "lossless", "speedup_vs_hf_assisted", "sweep", "runs"],
}


@pytest.mark.parametrize("name", list(KEYS))
def test_quick_benchmark_writes_results(name, tmp_path):
    # one thread: the test runner already keeps both cores busy, and oversubscribed threads crawl
    cmd = [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--threads", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=BENCH)
    result = json.loads((tmp_path / f"{name}.json").read_text())
    for key in KEYS[name]:
        assert key in result, key
    assert result["provenance"]["git_commit"] and result["provenance"]["machine"]["cores"]
    load = result["provenance"]["machine"]["load_during_run"]  # busy includes the benchmark's own work
    assert 0 < load["busy_fraction"] <= 1 and 0 <= load["steal_fraction"] < 1
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    if name == "decode":
        assert result["greedy_outputs_equal"] is True  # same weights, same greedy tokens
    if name == "speculative":
        assert result["lossless"] is True and set(result["firp_speedup"]) == {"math", "text"}
    if name == "dssn":
        assert len(result["variants"]) == 6
    if name == "rewards":
        assert result["math_checks_per_second"] > 0 and result["code_programs_per_second"] > 0
        assert 0.0 <= result["math_verifier_accuracy"] <= 1.0
        # every failure is listed, so the accuracy can be recomputed from them
        assert result["math_verifier_accuracy"] == 1 - len(result["math_verifier_failures"]) / result["accuracy"]["cases"]
    if name == "moe_layer":
        assert result["outputs_equal"] is True  # same weights, same output (atol 1e-4) at every T
        assert set(result["speedup_vs_hf"]) == {str(t) for t in result["setup"]["tokens"]}
    if name == "moe_balance":
        assert result["moge_max_is"] == 0.0 and result["moe_mean_is"] > 0.0  # MoGE balanced by construction
    if name == "ep_step":
        per_rank = result["runs"]["2"]["per_rank"]
        assert len(set(per_rank["moge"]["received"])) == 1  # every rank gets the same number of rows
        assert sum(per_rank["moge"]["received"]) == sum(per_rank["moe"]["received"])
    if name == "distill":
        acc = result["accuracy_by_iteration"]
        assert set(acc) == {"merge_balanced", "no_merge", "random_equal_size"}
        # the starting student, then one entry per iteration; all variants start from the same student
        assert all(len(a) == result["setup"]["iterations"] + 1 and a[0] == acc["no_merge"][0] for a in acc.values())
        # (c) trains on as many prompts as (a) did, iteration by iteration
        sel = result["selected_by_iteration"]
        assert sel["random_equal_size"] == sel["merge_balanced"]
        finals = [acc[v][-1] for v in ("merge_balanced", "no_merge", "random_equal_size")]
        assert result["merge_balanced_at_or_above_others"] == (finals[0] >= max(finals[1:]))
    if name == "medical":
        abilities = {"temporal", "reasoning", "comparison", "co-reference"}
        assert set(result["accuracy_by_ability"]) == set(result["single_image_accuracy_by_ability"]) == abilities
        assert 0.0 <= result["negative_accuracy"] <= 1.0 and result["failures"] == 0
    if name == "spatial":
        assert result["answerable_fraction"] == 1.0  # the rule reader recovers every answer at the default budget
        assert set(result["accuracy_by_category"]["with_description"]) == {"distance", "direction", "poi", "route",
                                                                           "grounding"}
        # the model's short prompts still hold every answer except (sometimes) a route's many streets
        rule = result["finetune"]["rule_reader_same_prompts"]["accuracy_by_category"]
        assert all(v == 1.0 for k, v in rule.items() if k != "route")
    if name == "prune":
        methods = {"minitron", "shortgpt", "minitron+clap", "minitron+slnp", "pangu-light"}
        assert set(result["loss_after_recovery"]) == set(result["speedup_decode"]) == methods
        assert result["models"]["dssn"]["methods"]["pangu-light"]["shape"]["norm_style"] == "pre"  # post-norms absorbed
        assert all(r["param_fraction"] <= result["setup"]["target_params"] for r in result["models"]["pre"]["methods"].values())
        # a subset of a gain vector never has a larger norm, so SLNP only scales gains up
        assert set(result["norm_scale"]) == {"pre", "dssn"}
        assert all(v["slnp_mean"] >= 1.0 and v["restoring_mean"] > 0 for v in result["norm_scale"].values())
    if name == "serve":
        assert set(result["levels"]) == {"1", "4", "16"} and all(v > 0 for v in result["tokens_per_s"].values())
        assert all(lv["tokens_per_request"] == result["setup"]["new_tokens"] for lv in result["levels"].values())
        assert result["server_after"]["running"] == 0 and result["server_after"]["waiting"] == 0
    if name == "sim_search":
        assert result["configs_per_second"] > 0 and result["front"]
    if name == "sim_validation":
        assert len({c["model"] for c in result["local"]["cases"]}) >= 3  # three sizes, train and decode each
        roles = [c["role"] for c in result["published"]["cases"]]
        assert roles.count("blind") >= 6 and all(c["source"] for c in result["published"]["cases"])
        assert result["moe_vs_moge"]["rows"][-1]["train_moe_over_moge"] > 1  # skewed MoE is slower than MoGE
    if name == "asr":  # every language scored both ways; rates are rates
        assert set(result["cer"]) == set(result["cer_ctc"]) and 0.0 <= result["lid_accuracy"] <= 1.0
        assert result["rtf_ctc"] > 0 and result["rtf_whisper_same_size"] > 0


def test_quick_never_writes_into_results(tmp_path):
    before = {p.name: p.stat().st_mtime for p in (BENCH / "results").glob("*")}
    subprocess.run([sys.executable, str(BENCH / "train_throughput.py"), "--quick", "--threads", "1"], check=True,
                   capture_output=True, timeout=600, cwd=tmp_path)
    after = {p.name: p.stat().st_mtime for p in (BENCH / "results").glob("*")}
    assert before == after


def test_readme_results_table_matches_results():
    """The README's table is generated from benchmarks/results; after a benchmark run, re-run _report.py."""
    proc = subprocess.run([sys.executable, str(BENCH / "_report.py"), "--check"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_model_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DUOMIND_CACHE", str(tmp_path))
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import _common, time; t = time.time(); "
            "p = _common.base_model(quick=True); print(p, time.time() - t)")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    path = first.stdout.split()[-2]
    assert (tmp_path / "bench-base-quick" / "run").is_dir() and path.startswith(str(tmp_path))
    weights = (pathlib.Path(path) / "model.safetensors").stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert second.stdout.split()[-2] == path  # the same checkpoint, not retrained
    assert (pathlib.Path(path) / "model.safetensors").stat().st_mtime_ns == weights


@pytest.mark.parametrize("argv, message", [
    (["--methods", "minitron,magic"], "unknown method(s) ['magic']"),
    (["--methods", "minitron"], "--methods selects a subset for --stage recover only"),
])
def test_prune_benchmark_refuses_bad_method_lists_before_any_work(tmp_path, argv, message):
    run = subprocess.run([sys.executable, str(BENCH / "prune.py"), "--quick", "--out", str(tmp_path), *argv],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr
    assert not any(tmp_path.iterdir())  # refused before writing anything
