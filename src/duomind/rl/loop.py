"""The RL driver: one learner, rollout worker actors and a reward actor on Ray, under the SSP scheduler.

Pangu Embedded Stage 1b (arXiv 2505.22375), see `duomind.rl.scheduler` for the scheduling rules and
`duomind.rl.grpo` for the objective. One loop iteration:

1. start groups on the least-loaded workers while the scheduler admits them (each job carries the newest
   weights reference and a seed fixed by its job id, so a regenerated job samples the same as the original);
2. wait for any generation or scoring to finish; a finished generation goes to the reward actor, a finished
   score completes the group (the scheduler drops or re-queues it when too stale);
3. a worker that died is restarted and its jobs are sent again (results are accepted once per job id);
   a score that takes longer than `reward_timeout_s` fails its samples instead of stopping the learner;
4. when B eligible groups are ready the learner takes a GRPO step, publishes version + 1 through the
   object store and, every `save_every` steps, writes an atomic checkpoint with the version counter.

A checkpoint records the version, the job and prompt counters, the prompts still in flight (sent again on
resume) and the reward normaliser's state; with s = 0 a resumed run equals the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from duomind.machine import cpu_shares, cpu_times
from duomind.progress import progress_bar
from duomind.rl.config import RLConfig
from duomind.rl.reward import RewardFn, make_reward
from duomind.rl.scheduler import Group, SSPScheduler
from duomind.rl.workers import require_ray, reward_actor, rollout_actor


def load_prompts(path: str):
    """Task records for RL; every one needs a reference answer (code: tests) to be rewarded."""
    from duomind.tasks import read_tasks

    if not Path(path).is_file():
        raise FileNotFoundError(f"prompts file {path!r} does not exist; make task records with `duomind data make`.")
    tasks = read_tasks(path)
    if not tasks:
        raise ValueError(f"prompts file {path!r} holds no task records.")
    for t in tasks:
        if not t.answer.strip() or (t.task == "code" and not t.tests):
            need = "tests" if t.task == "code" else "a reference answer"
            raise ValueError(f"prompt {t.id or t.prompt[:40]!r} in {path} has no {need}; RL rewards need one for "
                             "every prompt. Drop such records or fill in their `answer` (code: `tests`).")
    return tasks


class Learner:
    """Policy, optional reference model and optimiser; one GRPO step per batch of groups."""

    def __init__(self, cfg: RLConfig):
        import torch

        from duomind.tokenizer import load_tokenizer
        from duomind.train.checkpoint import load_model, resolve_checkpoint
        from duomind.train.loop import param_groups

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.path = resolve_checkpoint(cfg.policy)
        self.model = load_model(self.path).train()
        self.tok = load_tokenizer(self.path)
        self.ref = load_model(self.path) if cfg.kl_coef else None
        c = self.model.config
        self.pad = c.pad_token_id if c.pad_token_id is not None else 0
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))

    def weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def step(self, groups: list[Group]) -> dict:
        import torch

        from duomind.rl.grpo import group_advantages, grpo_loss

        samples, adv = [], []
        for g in groups:
            samples += g.payload["samples"]
            adv += group_advantages(g.rewards, self.cfg.scale_std)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss, metrics = grpo_loss(self.model, samples, adv, self.pad, self.cfg.clip_eps, self.cfg.temperature,
                                  self.cfg.kl_coef, self.ref)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        if not math.isfinite(float(loss.detach())) or not math.isfinite(float(norm)):
            raise RuntimeError(f"GRPO loss {float(loss.detach())} / grad norm {float(norm)} is not finite; lower lr "
                               f"(now {self.cfg.lr}) or clip_eps and resume from the last checkpoint.")
        self.opt.step()
        return {**metrics, "grad_norm": float(norm)}


class RLRun:
    """One RL run (see the module docstring). `on_dispatch(run, job, slot)` is called after each job starts."""

    def __init__(self, cfg: RLConfig, reward_fn: RewardFn | None = None,
                 on_dispatch: Callable[[RLRun, dict, int], None] | None = None):
        self.ray = require_ray()
        self.cfg = cfg
        self.tasks = load_prompts(cfg.prompts)
        self.eval_tasks = None
        if cfg.eval_data:
            from duomind.tasks import read_tasks

            if not Path(cfg.eval_data).is_file():
                raise FileNotFoundError(f"eval_data {cfg.eval_data!r} does not exist.")
            self.eval_tasks = read_tasks(cfg.eval_data)[: cfg.eval_max]
        self.reward_fn = reward_fn if reward_fn is not None else make_reward(
            cfg.reward, cfg.rewards, cfg.reward_url, cfg.reward_timeout_s)
        self.on_dispatch = on_dispatch
        self.out = Path(cfg.out_dir)
        self.learner = Learner(cfg)
        self.sched = SSPScheduler(cfg.staleness, cfg.batch_groups, cfg.stale, cfg.band)
        self.next_job = self.next_prompt = 0
        self.retry: list[int] = []  # prompts to generate before new ones (resumed or stale-regenerated)
        self.jobs: dict[int, dict] = {}  # job id -> job, while not yet completed
        self.accepted: set[int] = set()
        self.counts = Counter()
        self.group_seconds: list[float] = []
        self.group_tokens: list[int] = []
        self.step_seconds: list[float] = []
        self.reward_state = None
        self.pids: dict[str, int] = {}  # actor name -> process id, for CPU accounting
        self.cpu: dict | None = None  # cpu_use() of the last loop

    # -- prompts and jobs --------------------------------------------------------------------------
    def _mode(self, prompt: int) -> str:
        modes = sorted(self.cfg.mode_mix)
        return random.Random(f"{self.cfg.seed}/{prompt}").choices(modes, [self.cfg.mode_mix[m] for m in modes])[0]

    def _new_job(self) -> dict:
        from duomind.tokenizer import chat_prompt

        queue = self.retry or self.sched.regenerate  # resumed prompts first, then stale ones to regenerate
        prompt = queue.pop(0) if queue else self.next_prompt
        if prompt == self.next_prompt:
            self.next_prompt += 1
        task = self.tasks[prompt % len(self.tasks)]
        mode = self._mode(prompt)
        ids = chat_prompt(self.learner.tok, [{"role": "user", "content": task.prompt}], mode=mode)
        job = {"job": self.next_job, "prompt": prompt, "task": task, "mode": mode, "prompt_ids": ids,
               "group_size": self.cfg.group_size, "seed": self.cfg.seed * 1_000_003 + self.next_job}
        self.next_job += 1
        return job

    # -- actors ------------------------------------------------------------------------------------
    def _start_actors(self) -> None:
        ray, cfg = self.ray, self.cfg
        if not ray.is_initialized():
            if cfg.ray_address:
                ray.init(address=cfg.ray_address)
            else:
                ray.init(num_cpus=cfg.num_cpus or cfg.workers + 1, object_store_memory=cfg.object_store_mb << 20,
                         include_dashboard=False, log_to_driver=False)
        self.workers = [self._spawn_worker() for _ in range(cfg.workers)]
        self.rewarder = reward_actor(ray, self.reward_fn)
        pids = ray.get([w.ready.remote() for w in self.workers] + [self.rewarder.ready.remote()])
        self.pids = {f"worker{i}": pid for i, pid in enumerate(pids[:-1])} | {"reward": pids[-1]}
        if self.reward_state is not None:
            ray.get(self.rewarder.load_state.remote(self.reward_state))

    def _spawn_worker(self):
        cfg = self.cfg
        return rollout_actor(self.ray, str(self.learner.path), cfg.worker_threads, cfg.max_new_tokens, cfg.temperature)

    def _stop_actors(self) -> None:
        for a in [*self.workers, self.rewarder]:
            self.ray.kill(a)

    # -- checkpoints -------------------------------------------------------------------------------
    def _resume(self) -> None:
        from duomind.config import ConfigError
        from duomind.train.checkpoint import atomic_write_text, latest_checkpoint, load_training_state

        # what this run started from: resuming it from another policy or prompt set would mix two runs
        source = {"policy": str(Path(self.learner.path).resolve()), "prompts": str(Path(self.cfg.prompts).resolve())}
        saved = self.out / "source.json"
        if saved.is_file():
            before = json.loads(saved.read_text())
            changed = [k for k in source if before.get(k) != source[k]]
            if changed:
                raise ConfigError(f"{self.out} holds an RL run started from {', '.join(f'{k} {before.get(k)}' for k in changed)}; "
                                  f"this config gives {', '.join(source[k] for k in changed)}. Use a new out_dir "
                                  "(or delete that one to start over).")
        else:
            atomic_write_text(saved, json.dumps(source, indent=1))
        path = latest_checkpoint(self.out)
        if path is None:
            return
        state = load_training_state(path, self.learner.model, self.learner.opt)["rl"]
        self.sched.version = state["version"]
        self.sched.consumed = state["consumed"]
        self.next_job, self.next_prompt = state["next_job"], state["next_prompt"]
        self.retry = list(state["pending_prompts"])
        self.counts.update(state["counts"])
        self.reward_state = state["reward_state"]

    def _save(self) -> None:
        from duomind.train.checkpoint import save_checkpoint

        pending = sorted({self.jobs[j]["prompt"] for j in self.sched.inflight} |
                         {g.prompt for g in self.sched.pending()}) + self.retry + self.sched.regenerate
        state = {"version": self.sched.version, "consumed": self.sched.consumed, "next_job": self.next_job,
                 "next_prompt": self.next_prompt, "pending_prompts": pending, "counts": dict(self.counts),
                 "reward_state": self.ray.get(self.rewarder.state.remote())}
        save_checkpoint(self.out, self.sched.version, self.learner.model, self.learner.tok, self.learner.opt,
                        {"step": self.sched.version, "rl": state}, self.cfg.keep_last)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        from duomind.train.metrics import MetricsLog

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._resume()
        before = self._evaluate() if self.eval_tasks and self.sched.version == 0 else None
        self._start_actors()
        log = MetricsLog(self.out / "metrics.jsonl")
        try:
            history = self._loop(log)
        finally:
            self._stop_actors()
        after = self._evaluate() if self.eval_tasks else None
        summary = self._summary(history, before, after)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot(log.rows(), self.out / "rl.png", f"GRPO, s = {cfg.staleness}")
        return summary

    def _loop(self, log) -> list[dict]:
        ray, cfg, sched = self.ray, self.cfg, self.sched
        weights = [ray.put(self.learner.weights())]
        load = [0] * len(self.workers)
        gen: dict = {}  # ref -> (job id, worker slot)
        scoring: dict = {}  # ref -> (job id, generation result, deadline)
        depth = 1 if cfg.staleness == 0 else 2  # a queued job keeps a worker busy while the driver is stepping
        cpu0, t0 = self._cpu(), time.perf_counter()
        busy, samples_done, history = 0.0, 0, []
        with progress_bar("rl", cfg.max_steps, enabled=cfg.progress, completed=sched.version, unit="step") as advance:
            while sched.version < cfg.max_steps:
                while sched.may_dispatch() and min(load) < depth:
                    job = self._new_job()
                    self.jobs[job["job"]] = job
                    sched.dispatched(job["job"])
                    self._send(job, load, gen, weights)
                ready, _ = ray.wait(list(gen) + list(scoring), num_returns=1, timeout=0.2)
                for ref in ready:
                    if ref in gen:
                        self._generated(ref, gen, scoring, load, weights)
                    else:
                        self._scored(ref, scoring)
                now = time.perf_counter()
                for ref, (job, result, deadline) in list(scoring.items()):
                    if now > deadline:  # reward timeout: these samples fail, the learner carries on
                        del scoring[ref]
                        try:
                            ray.cancel(ref)  # best effort: a running scorer thread cannot always be stopped
                        except Exception:  # noqa: BLE001
                            pass
                        self._complete(job, result, [None] * len(result["responses"]), "timeout")
                batch = sched.take_batch()
                if batch is None:
                    continue
                t_step = time.perf_counter()
                metrics = self.learner.step(batch)
                sched.stepped()
                weights = [ray.put(self.learner.weights())]
                step_s = time.perf_counter() - t_step
                busy += step_s
                self.step_seconds.append(step_s)
                samples_done += sum(len(g.rewards) for g in batch)
                row = self._row(batch, metrics, time.perf_counter() - t0, busy, samples_done)
                log.write(**row)
                history.append(row)
                if sched.version % cfg.save_every == 0 or sched.version == cfg.max_steps:
                    self._save()
                advance(1, info=f"reward {row['reward_mean']:.3f} · acc {row['accuracy']:.2f} · "
                                f"{row['samples_per_s']:.1f} samples/s")
        self.cpu = cpu_use(cpu0, self._cpu(), time.perf_counter() - t0)
        return history

    def _send(self, job: dict, load: list[int], gen: dict, weights: list) -> None:
        slot = min(range(len(load)), key=lambda i: load[i])
        ref = self.workers[slot].generate.remote({k: job[k] for k in ("job", "prompt_ids", "group_size", "seed")},
                                                 weights, self.sched.version)
        gen[ref] = (job["job"], slot)
        load[slot] += 1
        if self.on_dispatch is not None:
            self.on_dispatch(self, job, slot)

    def _generated(self, ref, gen: dict, scoring: dict, load: list[int], weights: list) -> None:
        ray = self.ray
        job_id, slot = gen.pop(ref)
        load[slot] -= 1
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            # the worker died mid-generation: restart it (once, whichever of its jobs notices first) and resend
            self._restart(slot)
            self.counts["resent"] += 1
            self._send(self.jobs[job_id], load, gen, weights)
            return
        if job_id not in self.jobs:  # a resent job whose first result also arrived: count it once
            self.counts["duplicates_ignored"] += 1
            return
        job = self.jobs[job_id]
        self.group_seconds.append(result["seconds"])
        self.group_tokens.append(max(len(r) for r in result["responses"]))
        samples = [{"id": f"{job_id}/{i}", "task": job["task"].to_dict(), "mode": job["mode"], "response": text,
                    "tokens": len(ids)} for i, (text, ids) in enumerate(zip(result["texts"], result["responses"]))]
        scoring[self.rewarder.score.remote(samples)] = (job_id, result, time.perf_counter() + self.cfg.reward_timeout_s)

    def _restart(self, slot: int) -> None:
        ray = self.ray
        try:
            ray.get(self.workers[slot].ready.remote(), timeout=5)
            return  # already replaced by an earlier failure of the same worker
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        self.workers[slot] = self._spawn_worker()
        self.pids[f"worker{slot}"] = ray.get(self.workers[slot].ready.remote())
        self.counts["worker_restarts"] += 1

    def _scored(self, ref, scoring: dict) -> None:
        job_id, result, _ = scoring.pop(ref)
        try:
            scores = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the reward actor itself failed: per-sample failures
            self.rewarder = reward_actor(self.ray, self.reward_fn)
            self.pids.pop("reward", None)  # its CPU time is no longer measured
            self.counts["reward_restarts"] += 1
            scores = [{"reward": None, "error": str(e)}] * len(result["responses"])
        self._complete(job_id, result, scores, None)

    def _complete(self, job_id: int, result: dict, scores: list, failure: str | None) -> None:
        from duomind.rl.grpo import Sample

        if job_id in self.accepted:  # a resent job whose first result also arrived: count it once
            self.counts["duplicates_ignored"] += 1
            return
        self.accepted.add(job_id)
        job = self.jobs.pop(job_id)
        scores = [s if isinstance(s, dict) else {"reward": None} for s in scores]
        failed = sum(s.get("reward") is None for s in scores)
        self.counts["reward_failures"] += failed
        if failure:
            self.counts[f"reward_{failure}s"] += 1
        samples = [Sample(job["prompt_ids"], ids, lp, result["version"], s.get("reward"), s.get("correct"))
                   for ids, lp, s in zip(result["responses"], result["logprobs"], scores)]
        group = Group(job_id, job["prompt"], result["version"], [s.reward for s in samples],
                      [s.correct for s in samples], {"samples": samples, "scores": scores, "job": job})
        if failed == len(samples):
            self.sched.abandoned(job_id)
            self.counts["groups_failed"] += 1
            return
        if not self.sched.completed(group):
            self.counts["groups_stale"] += 1

    # -- metrics -----------------------------------------------------------------------------------
    def _cpu(self) -> dict:
        """CPU seconds used so far by the driver and by each actor process (read from outside, so a busy actor
        need not answer; only for a local Ray, whose pids are this machine's), and the machine's CPU times."""
        import psutil

        actors = {}
        for name, pid in self.pids.items() if not self.cfg.ray_address else ():
            try:
                t = psutil.Process(pid).cpu_times()
                actors[name] = (pid, t.user + t.system)
            except psutil.Error:  # gone (killed, being restarted)
                pass
        return {"driver": time.process_time(), "actors": actors, "machine": cpu_times()}

    def _row(self, batch: list[Group], metrics: dict, wall: float, busy: float, samples_done: int) -> dict:
        samples = [s for g in batch for s in g.payload["samples"]]
        rewards = [s.reward for s in samples if s.reward is not None]
        correct = [bool(s.correct) for s in samples if s.reward is not None]
        by_source: dict[str, list[float]] = defaultdict(list)
        for g in batch:
            for sc in g.payload["scores"]:
                for name, v in (sc.get("components") or {}).items():
                    if v is not None:
                        by_source[name].append(v)
        stale = Counter(self.sched.version - 1 - g.version for g in batch)
        return {"step": self.sched.version, "wall_s": wall, "samples": samples_done,
                "samples_per_s": samples_done / wall, "learner_idle_fraction": 1 - busy / wall,
                "reward_mean": sum(rewards) / max(len(rewards), 1),
                "reward_by_source": {k: sum(v) / len(v) for k, v in sorted(by_source.items())},
                "accuracy": sum(correct) / max(len(correct), 1),
                "response_tokens": sum(len(s.response_ids) for s in samples) / len(samples),
                "staleness_hist": {str(k): v for k, v in sorted(stale.items())},
                "groups_with_variance": sum(g.has_variance for g in batch), "jobs": [g.job for g in batch], **metrics,
                **{k: v for k, v in self.counts.items()}, "groups_dropped": len(self.sched.dropped)}

    def _evaluate(self) -> dict:
        from duomind.distill.loop import Verifier, evaluate

        verifier = Verifier()
        try:
            return evaluate(self.learner.model, self.learner.tok, self.eval_tasks, self.cfg.eval_mode,
                            self.cfg.max_new_tokens, 32, verifier)
        finally:
            verifier.close()
            self.learner.model.train()

    def _summary(self, history: list[dict], before: dict | None, after: dict | None) -> dict:
        last = history[-1] if history else {}
        return {"steps": self.sched.version, "staleness": self.cfg.staleness,
                "samples_per_s": last.get("samples_per_s"), "learner_idle_fraction": last.get("learner_idle_fraction"),
                "wall_s": last.get("wall_s"), "counts": dict(self.counts), "groups_dropped": len(self.sched.dropped),
                "accepted_jobs": sorted(self.accepted), "accuracy_before": before, "accuracy_after": after,
                "group_seconds": self.group_seconds, "group_tokens": self.group_tokens,
                "step_seconds": self.step_seconds, "cpu": self.cpu, "history": history}


def cpu_use(start: dict, end: dict, wall: float) -> dict:
    """Where the CPU went between two `RLRun._cpu` snapshots `wall` seconds apart: seconds per process, cores
    in use on average by the run's own processes, and the machine's busy and steal shares
    (`duomind.machine`). An actor restarted
    in between counts from its own start; one that could not be read is left out. The machine's shares are
    this machine's (the driver's, on a joined cluster)."""
    actors = {}
    for name, (pid, secs) in end["actors"].items():
        before = start["actors"].get(name)
        actors[name] = secs - before[1] if before and before[0] == pid else secs
    driver = end["driver"] - start["driver"]
    shares = cpu_shares(start["machine"], end["machine"])
    return {"wall_s": wall, "driver_s": driver, "actors_s": actors,
            # None on a joined cluster: its actors run elsewhere and are not measured
            "cores_used": (driver + sum(actors.values())) / max(wall, 1e-9) if actors else None,
            "machine_busy_fraction": shares["busy_fraction"], "machine_steal_fraction": shares["steal_fraction"]}


def train_rl(cfg: RLConfig, reward_fn: RewardFn | None = None) -> dict:
    """Run (or resume) GRPO under the SSP scheduler; returns the run summary (also in OUT/summary.json).

    Args:
        cfg: The run configuration.
        reward_fn: A callable over sample dicts (see `duomind.rl.reward`); default: MARS as `cfg.reward` says.
    """
    return RLRun(cfg, reward_fn).run()


def plot(rows: list[dict], out: Path, title: str) -> Path | None:
    """Reward against samples and against wall time, and accuracy, from metrics.jsonl rows."""
    rows = [r for r in rows if "reward_mean" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    for ax, key, label in ((axes[0], "samples", "samples"), (axes[1], "wall_s", "wall time (s)")):
        ax.plot([r[key] for r in rows], [r["reward_mean"] for r in rows], label="reward")
        ax.plot([r[key] for r in rows], [r["accuracy"] for r in rows], label="accuracy", alpha=0.7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
