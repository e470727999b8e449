"""GRPO, the SSP scheduler, the simulation and bad input of duomind.rl (no Ray started here)."""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch

from duomind.rl.grpo import Sample, behaviour_logprobs, group_advantages, grpo_loss, token_logprobs
from duomind.rl.scheduler import Group, SSPScheduler
from duomind.rl.sim import simulate


@pytest.fixture(scope="module")
def tiny_model():
    from duomind.config import ModelConfig
    from duomind.model import DuoMind

    torch.manual_seed(0)
    return DuoMind(ModelConfig.from_preset("tiny", vocab_size=64))


def _samples(model, old_shift: float = 0.0, rewards=(1.0, 0.0, 0.5, None)) -> list[Sample]:
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, 64, (5,), generator=g).tolist()
    responses = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (3, 7, 4, 2)]
    lps = behaviour_logprobs(model, prompt, responses, pad_id=0, temperature=0.7)
    return [Sample(prompt, r, [x + old_shift for x in lp], 0, rw) for r, lp, rw in zip(responses, lps, rewards)]


def test_group_advantages_centre_scale_and_skip_failures():
    adv = group_advantages([1.0, 0.0, None, 2.0], scale_std=False)
    assert adv == [0.0, -1.0, 0.0, 1.0]
    scaled = group_advantages([1.0, 0.0, None, 2.0], scale_std=True)
    std = math.sqrt(2 / 3)
    assert scaled[3] == pytest.approx(1 / (std + 1e-4)) and scaled[2] == 0.0
    assert group_advantages([0.5, 0.5]) == [0.0, 0.0]  # no variance, no signal
    assert group_advantages([None, None]) == [0.0, 0.0]


def test_on_policy_ratio_is_one_and_loss_is_token_mean_of_advantage(tiny_model):
    samples = _samples(tiny_model)
    adv = group_advantages([s.reward for s in samples])
    loss, m = grpo_loss(tiny_model, samples, adv, pad_id=0, temperature=0.7)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and m["clip_fraction"] == 0.0
    # token-level aggregation: every token of sample i carries -A_i; failed sample (None) left out
    kept = [(s, a) for s, a in zip(samples, adv) if s.reward is not None]
    expected = -sum(a * len(s.response_ids) for s, a in kept) / sum(len(s.response_ids) for s, _ in kept)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    assert m["tokens"] == 14 and m["entropy"] > 0


def test_stale_samples_are_reweighted_by_the_behaviour_policy(tiny_model):
    fresh = _samples(tiny_model)
    adv = group_advantages([s.reward for s in fresh])
    # behaviour policy gave every token e^0.1 times less probability than the current one: ratio = e^0.1
    stale = _samples(tiny_model, old_shift=-0.1)
    loss_fresh, _ = grpo_loss(tiny_model, fresh, adv, pad_id=0, temperature=0.7)
    loss_stale, m = grpo_loss(tiny_model, stale, adv, pad_id=0, temperature=0.7, clip_eps=0.2)
    assert m["ratio_mean"] == pytest.approx(math.exp(0.1), rel=1e-4)
    assert float(loss_stale.detach()) == pytest.approx(float(loss_fresh.detach()) * math.exp(0.1), rel=1e-4)


def test_clipped_tokens_give_no_gradient(tiny_model):
    # ratio e^1 > 1 + eps with positive advantages: the clipped (constant) side is taken everywhere
    samples = _samples(tiny_model, old_shift=-1.0, rewards=(1.0, 1.0, 1.0, 1.0))
    tiny_model.zero_grad()
    loss, m = grpo_loss(tiny_model, samples, [1.0] * 4, pad_id=0, temperature=0.7)
    loss.backward()
    assert m["clip_fraction"] == 1.0
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in tiny_model.parameters())
    tiny_model.zero_grad()
    loss, _ = grpo_loss(tiny_model, _samples(tiny_model, rewards=(1.0, 1.0, 1.0, 1.0)), [1.0] * 4, pad_id=0,
                        temperature=0.7)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in tiny_model.parameters())


def test_kl_to_identical_reference_is_zero(tiny_model):
    samples = _samples(tiny_model)
    _, m = grpo_loss(tiny_model, samples, [1.0, -1.0, 0.0, 0.0], pad_id=0, temperature=0.7, kl_coef=0.1,
                     ref_model=tiny_model)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)


def test_behaviour_logprobs_match_a_full_forward(tiny_model):
    samples = _samples(tiny_model)
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        lp, _ = token_logprobs(tiny_model, ids, temperature=0.7)
        assert lp[0, len(s.prompt_ids) - 1:].tolist() == pytest.approx(s.logprobs, abs=1e-5)


def test_batch_without_rewards_is_refused(tiny_model):
    samples = _samples(tiny_model, rewards=(None, None, None, None))
    with pytest.raises(ValueError, match="no sample in the batch has a reward"):
        grpo_loss(tiny_model, samples, [0.0] * 4, pad_id=0)


# -- scheduler ----------------------------------------------------------------------------------------
def _admit(s: SSPScheduler, start: int) -> list[int]:
    jobs = []
    while s.may_dispatch():
        s.dispatched(start + len(jobs))
        jobs.append(start + len(jobs))
    return jobs


def test_synchronous_admits_one_batch_per_version():
    s = SSPScheduler(staleness=0, batch_groups=3)
    jobs = _admit(s, 0)
    assert jobs == [0, 1, 2]
    for j in jobs[:2]:
        s.completed(Group(j, j, 0))
    assert s.take_batch() is None  # the learner waits for the whole batch
    s.completed(Group(2, 2, 0))
    assert [g.job for g in s.take_batch()] == [0, 1, 2]
    assert not s.may_dispatch()
    s.stepped()
    assert _admit(s, 3) == [3, 4, 5]


def test_ssp_runs_ahead_by_s_batches_and_drops_what_is_too_stale():
    s = SSPScheduler(staleness=1, batch_groups=2)
    assert _admit(s, 0) == [0, 1, 2, 3]
    s.completed(Group(1, 1, 0))
    s.completed(Group(2, 2, 0))
    assert {g.job for g in s.take_batch()} == {1, 2}  # job 0 (a long generation) does not block the learner
    s.stepped()
    assert _admit(s, 4) == [4, 5]
    s.completed(Group(3, 3, 0))
    s.completed(Group(4, 4, 1))
    s.take_batch()
    s.stepped()  # version 2: anything generated by version 0 is now 2 behind
    assert s.completed(Group(0, 0, 0)) is False and s.dropped == [0]
    with pytest.raises(ValueError, match="accepted only once"):
        s.completed(Group(0, 0, 0))


def test_stale_groups_can_be_regenerated_and_ready_ones_purged():
    s = SSPScheduler(staleness=1, batch_groups=1, stale="regenerate")
    _admit(s, 0)
    s.completed(Group(0, 10, 0))
    s.completed(Group(1, 11, 0, rewards=[0.0, 1.0]))
    assert s.take_batch()[0].job == 1  # variance first
    s.stepped()
    s.stepped()  # version 2 (as if another batch came in): group 0 (version 0) is now too stale
    assert s.take_batch() is None
    assert s.dropped == [0] and s.regenerate == [10]


def test_priority_variance_then_band_then_freshness():
    s = SSPScheduler(staleness=3, batch_groups=1)
    _admit(s, 0)
    s.stepped()
    _admit(s, 4)
    s.completed(Group(0, 0, 0, [1.0, 1.0], [True, True]))  # no variance
    s.completed(Group(1, 1, 0, [0.0] + [1.0] * 5, [False] + [True] * 5))  # variance, easy (pass rate 5/6)
    s.completed(Group(2, 2, 0, [0.0, 1.0], [False, True]))  # variance, medium, older
    s.completed(Group(4, 4, 1, [0.0, 1.0], [False, True]))  # variance, medium, fresher
    order = []
    while (b := s.take_batch()) is not None:
        order.append(b[0].job)
    assert order == [4, 2, 1, 0]


def test_scheduler_rejects_bad_settings():
    with pytest.raises(ValueError, match="staleness"):
        SSPScheduler(-1, 2)
    with pytest.raises(ValueError, match="stale="):
        SSPScheduler(1, 2, stale="keep")


# -- simulation ---------------------------------------------------------------------------------------
def test_sim_without_tail_or_learner_time_gains_nothing_from_staleness():
    a = simulate([1.0], 0.0, workers=4, batch_groups=4, staleness=0, steps=20)
    b = simulate([1.0], 0.0, workers=4, batch_groups=4, staleness=2, steps=20)
    assert a["samples_per_s"] == pytest.approx(4.0) and b["samples_per_s"] == pytest.approx(4.0)


def test_sim_long_tail_favours_ssp_and_respects_the_bound():
    tail = [1.0] * 9 + [8.0]
    sync = simulate(tail, 0.5, workers=64, batch_groups=64, staleness=0, steps=30, group_size=4)
    ssp = simulate(tail, 0.5, workers=64, batch_groups=64, staleness=1, steps=30, group_size=4)
    assert ssp["samples_per_s"] > 1.5 * sync["samples_per_s"]
    assert ssp["learner_idle_fraction"] < sync["learner_idle_fraction"]
    assert set(sync["staleness_hist"]) == {"0"} and set(ssp["staleness_hist"]) <= {"0", "1"}


# -- bad input ----------------------------------------------------------------------------------------
def test_cpu_use_splits_the_cpu_by_process_and_counts_a_restarted_actor_from_its_start():
    from duomind.rl.loop import cpu_use

    machine = lambda busy, idle, steal: {"user": busy, "system": 0.0, "idle": idle, "iowait": 0.0,  # noqa: E731
                                         "steal": steal, "guest": busy}  # guest lies inside user
    start = {"driver": 1.0, "actors": {"worker0": (10, 5.0), "worker1": (11, 5.0), "reward": (12, 1.0)},
             "machine": machine(100.0, 100.0, 0.0)}
    end = {"driver": 4.0, "actors": {"worker0": (10, 9.0), "worker1": (99, 2.0), "reward": (12, 1.5)},
           "machine": machine(107.0, 101.0, 2.0)}  # 10 s of machine time over 5 s on 2 cores
    use = cpu_use(start, end, wall=5.0)
    assert use["driver_s"] == 3.0
    assert use["actors_s"] == {"worker0": 4.0, "worker1": 2.0, "reward": 0.5}  # worker1 restarted as pid 99
    assert use["cores_used"] == pytest.approx((3.0 + 4.0 + 2.0 + 0.5) / 5.0)
    assert use["machine_busy_fraction"] == pytest.approx(0.7) and use["machine_steal_fraction"] == pytest.approx(0.2)
    remote = cpu_use({**start, "actors": {}}, {**end, "actors": {}}, wall=5.0)  # a joined cluster: not measured
    assert remote["cores_used"] is None and remote["driver_s"] == 3.0


def test_missing_ray_names_the_extra(monkeypatch):
    from duomind.rl.workers import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"pip install 'duomind\[rl\]'"):
        require_ray()


def test_prompts_without_reference_answers_are_refused(tmp_path):
    from duomind.rl.loop import load_prompts
    from duomind.tasks import generate, write_jsonl

    rec = generate("add", n=2, seed=0)[1].to_dict() | {"answer": " "}
    write_jsonl(tmp_path / "p.jsonl", [generate("add", n=1, seed=0)[0].to_dict(), rec])
    with pytest.raises(ValueError, match=f"{rec['id']}.*no a reference answer|{rec['id']}.*reference answer"):
        load_prompts(str(tmp_path / "p.jsonl"))
    with pytest.raises(FileNotFoundError, match="duomind data make"):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_config_errors_name_the_field():
    from duomind.rl.config import RLConfig

    with pytest.raises(ValueError, match="policy"):
        RLConfig(prompts="x.jsonl")
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(policy="p", prompts="x", group_size=1)
    with pytest.raises(ValueError, match="mode_mix"):
        RLConfig(policy="p", prompts="x", mode_mix={"fast": -1})
    cfg = RLConfig(policy="p", prompts="x", rewards={"norm_warmup": 4, "sandbox": {"wall_s": 2.0}})
    assert cfg.rewards.norm_warmup == 4 and cfg.rewards.sandbox.wall_s == 2.0


def test_reward_errors_become_per_sample_failures():
    from duomind.rl.reward import MarsReward, score_safely

    def flaky(samples):
        if any(s["id"] == "bad" for s in samples):
            raise ConnectionError("judge down")
        return [1.0 for _ in samples]

    out = score_safely(flaky, [{"id": "a"}, {"id": "bad"}, {"id": "c"}])
    assert [o["reward"] for o in out] == [1.0, None, 1.0] and "judge down" in out[1]["error"]
    assert score_safely(lambda s: ["nope"] * len(s), [{"id": "a"}])[0]["reward"] is None
    # real MARS: a right answer scores higher than a wrong one and is marked correct
    from duomind.rewards.config import RewardConfig
    from duomind.tasks import generate

    task = generate("add", n=1, seed=0)[0].to_dict()
    mars = MarsReward(RewardConfig(normalize=False))
    right, wrong = mars([{"id": "r", "task": task, "mode": "fast", "response": task["answer"]},
                         {"id": "w", "task": task, "mode": "fast", "response": "-1"}])
    assert right["correct"] is True and wrong["correct"] is False and right["reward"] > wrong["reward"]


def test_cli_reports_bad_prompts_cleanly(tmp_path):
    from duomind.cli import main

    with pytest.raises(SystemExit, match="duomind rl: error: prompts file .*missing.jsonl.* does not exist"):
        main(["rl", "--policy", str(tmp_path), "--prompts", str(tmp_path / "missing.jsonl"), "--progress", "false"])


def test_http_reward_scores_through_the_reward_server():
    import socket
    import threading

    uvicorn = pytest.importorskip("uvicorn")
    from duomind.rewards.batch import Scorer
    from duomind.rewards.config import RewardConfig
    from duomind.rewards.service import create_app
    from duomind.rl.reward import HttpReward, score_safely
    from duomind.tasks import generate

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Scorer(RewardConfig(normalize=False), workers=0)),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        task = generate("add", n=1, seed=0)[0].to_dict()
        samples = [{"id": "r", "task": task, "mode": "fast", "response": task["answer"]},
                   {"id": "w", "task": task, "mode": "fast", "response": "-1"}]
        right, wrong = score_safely(HttpReward(f"http://127.0.0.1:{port}", timeout_s=10), samples)
        assert right["correct"] is True and wrong["correct"] is False and right["reward"] > wrong["reward"]
    finally:
        server.should_exit = True
        thread.join(5)
    # the server is gone: every sample fails, nothing raises
    gone = score_safely(HttpReward(f"http://127.0.0.1:{port}", timeout_s=1), samples)
    assert [g["reward"] for g in gone] == [None, None] and all(g["error"] for g in gone)
