"""Discrete-event simulation of the RL loop at any number of rollout workers.

Feeds measured per-group generation latencies and learner step times through the SAME `SSPScheduler`
the Ray loop uses, on a simulated clock: W workers each generate one group at a time (latency drawn from
the measured ones), the learner steps for `step_s` as soon as B eligible groups are ready, and weights
published at version v reach a worker when it starts its next group. What it answers: how samples/s and
learner idle time change with the staleness bound s when the machine has many more workers than ours.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Sequence

from duomind.rl.scheduler import Group, SSPScheduler


def simulate(latencies: Sequence[float], step_s: float | Sequence[float], workers: int, batch_groups: int,
             staleness: int, steps: int, group_size: int = 1, stale: str = "drop", seed: int = 0) -> dict:
    """Simulate `steps` learner steps; returns samples/s, learner idle fraction, worker utilisation, drops.

    Args:
        latencies: Measured seconds to generate (and score) one group; sampled with replacement.
        step_s: Learner seconds per step (one value, or measured values sampled with replacement).
        workers: Rollout workers W.
        batch_groups: Groups per learner step B.
        staleness: SSP bound s (0 synchronous).
        steps: Learner steps to simulate.
        group_size: Responses per group G (only scales samples/s).
        stale: "drop" or "regenerate" stale groups.
        seed: Seed of the latency draws (the same seed gives every s the same draw sequence).
    """
    if not latencies:
        raise ValueError("no latencies to simulate with; measure some first")
    rng = random.Random(seed)
    step_times = [float(step_s)] if isinstance(step_s, (int, float)) else list(step_s)
    sched = SSPScheduler(staleness, batch_groups, stale)
    t, free, next_job, next_prompt = 0.0, workers, 0, 0
    events: list[tuple[float, int, int, int]] = []  # (finish time, job, prompt, version)
    learner_until, learning, busy_learner, busy_workers = None, False, 0.0, 0.0
    staleness_hist: Counter[int] = Counter()
    done = 0
    while done < steps:
        while free and sched.may_dispatch():
            prompt = sched.regenerate.pop(0) if sched.regenerate else next_prompt
            if prompt == next_prompt:
                next_prompt += 1
            lat = rng.choice(latencies)
            heapq.heappush(events, (t + lat, next_job, prompt, sched.version))
            sched.dispatched(next_job)
            next_job, free, busy_workers = next_job + 1, free - 1, busy_workers + lat
        if not learning:
            batch = sched.take_batch()
            if batch is not None:
                dt = rng.choice(step_times)
                learner_until, learning, busy_learner = t + dt, True, busy_learner + dt
                staleness_hist.update(sched.version - g.version for g in batch)
        nxt = events[0][0] if events else float("inf")
        if learning and learner_until <= nxt:
            t, learning = learner_until, False
            sched.stepped()
            done += 1
            continue
        if not events:
            raise RuntimeError("simulation stalled: no generation in flight and no batch ready")
        t, job, prompt, version = heapq.heappop(events)
        free += 1
        sched.completed(Group(job, prompt, version))
    samples = steps * batch_groups * group_size
    return {"workers": workers, "staleness": staleness, "steps": steps, "seconds": t, "samples_per_s": samples / t,
            "learner_idle_fraction": 1 - busy_learner / t,
            "worker_utilisation": min(1.0, busy_workers / (workers * t)),  # work started but unfinished counts
            "dropped_groups": len(sched.dropped), "groups_generated": next_job,
            "staleness_hist": {str(k): v for k, v in sorted(staleness_hist.items())}}
