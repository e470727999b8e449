"""duomind.rl on a real (local) Ray instance: worker faults, reward timeouts, exact resume.

One Ray session serves the module (starting Ray costs seconds); the runs are tiny (random 2-layer model).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the reward functions below, for the actors
    ray.init(num_cpus=4, object_store_memory=80 << 20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    from duomind.config import ModelConfig
    from duomind.model import DuoMind
    from duomind.tasks import generate, write_jsonl
    from duomind.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("rl")
    torch.manual_seed(0)
    model = DuoMind(ModelConfig.from_preset("tiny", vocab_size=len(tiny_tokenizer),
                                            pad_token_id=tiny_tokenizer.pad_token_id,
                                            eos_token_id=tiny_tokenizer.eos_token_id))
    policy = save_checkpoint(root / "policy", 0, model, tiny_tokenizer, None, {"step": 0})
    write_jsonl(root / "tasks.jsonl", generate("add", n=12, seed=0, difficulty=1))
    return root, policy


def _cfg(root, policy, out, **kw):
    from duomind.rl.config import RLConfig

    base = dict(policy=str(policy), prompts=str(root / "tasks.jsonl"), out_dir=str(root / out), group_size=2,
                batch_groups=2, max_steps=3, max_new_tokens=24, workers=2, progress=False, save_every=2,
                lr=1e-3)
    return RLConfig(**{**base, **kw})


def _by_length(samples):
    # a reward with variance inside groups for a random model: parity of the response length
    return [{"reward": float(s["tokens"] % 2), "correct": s["tokens"] % 2 == 1} for s in samples]


def test_killed_worker_is_restarted_and_slow_rewards_fail_per_sample(ray_session, setup):
    from duomind.rl.loop import RLRun

    root, policy = setup
    killed = []

    def kill_once(run, job, slot):
        if job["job"] == 3 and not killed:
            killed.append(job["job"])
            threading.Timer(0.02, ray.kill, [run.workers[slot]]).start()  # mid-generation

    def slow_for_job_1(samples):
        if samples[0]["id"].startswith("1/"):
            time.sleep(2.0)
        return _by_length(samples)

    # synchronous (s = 0), so the learner must wait for the slow group until it times out
    cfg = _cfg(root, policy, "faults", staleness=0, reward_timeout_s=0.5)
    summary = RLRun(cfg, slow_for_job_1, on_dispatch=kill_once).run()
    counts, history = summary["counts"], summary["history"]
    assert summary["steps"] == 3 and counts["worker_restarts"] == 1
    # the slow scoring timed out: its two samples failed, the learner went on
    assert counts["reward_timeouts"] == 1 and counts["reward_failures"] == 2 and counts["groups_failed"] == 1
    consumed = [j for row in history for j in row["jobs"]]
    assert len(consumed) == len(set(consumed)) == 3 * 2  # no group counted twice
    assert 3 in summary["accepted_jobs"]  # the killed job's group was not lost
    assert sum(row["samples"] - prev for row, prev in zip(history, [0] + [r["samples"] for r in history])) == 12
    assert all(row["staleness_hist"] == {"0": 2} for row in history)
    assert 1 not in consumed and 1 in summary["accepted_jobs"]  # failed, accounted for, not learned from
    # where the CPU went, read from outside the actors: every process, the restarted worker from its own start
    cpu = summary["cpu"]
    assert set(cpu["actors_s"]) == {"worker0", "worker1", "reward"} and cpu["driver_s"] > 0
    assert all(0 <= v < cpu["wall_s"] * 2 for v in cpu["actors_s"].values())
    assert 0 < cpu["machine_busy_fraction"] <= 1 and 0 <= cpu["machine_steal_fraction"] < 1


@pytest.mark.slow  # three actor start-ups per run on two cores: ~45 s
def test_resume_equals_uninterrupted_with_mars_rewards(ray_session, setup):
    import shutil

    from duomind.rl.loop import train_rl
    from duomind.train.checkpoint import atomic_write_text, latest_checkpoint, load_model

    root, policy = setup
    # MARS without normalisation: with it, a reward depends on the order groups reach the scorer, which
    # several racing workers make timing-dependent (the normaliser's state is checkpointed all the same)
    mars = {"normalize": False}
    train_rl(_cfg(root, policy, "whole", staleness=0, max_steps=4, rewards=mars))
    # an interrupted run: only the step-2 checkpoint of the same run exists, then it is resumed
    shutil.copytree(root / "whole" / "step-000002", root / "parts" / "step-000002")
    atomic_write_text(root / "parts" / "latest", "step-000002")
    resumed = train_rl(_cfg(root, policy, "parts", staleness=0, max_steps=4, rewards=mars))
    assert resumed["steps"] == 4 and [r["step"] for r in resumed["history"]] == [3, 4]
    a, b = load_model(latest_checkpoint(root / "whole")), load_model(latest_checkpoint(root / "parts"))
    moved = load_model(policy)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, z) for x, z in zip(a.state_dict().values(), moved.state_dict().values()))
    # the same directory resumed from another starting policy would mix two runs: refused, naming both
    from duomind.config import ConfigError

    with pytest.raises(ConfigError, match="started from policy"):
        train_rl(_cfg(root, latest_checkpoint(root / "whole"), "parts", staleness=0, max_steps=5, rewards=mars))
