"""AdaptThink RL for auto mode (arXiv 2505.13417), the last training stage of the dual-system reasoner.

Pangu Embedded (arXiv 2505.22375) lets the model choose between thinking and answering directly; the
fusion SFT teaches that choice from labels, and this stage refines it by reinforcement, so that the model
skips thought where thinking does not pay. Each step:

1. B training problems; for each, G/2 responses sampled in fast mode and G/2 in slow mode. AdaptThink
   samples both choices equally (its importance sampling), since the model alone would rarely try the one it
   disfavours; here each half comes from the model's own manual mode.
2. Every response is scored as an answer to the *auto* prompt with AdaptThink's reward
   (`fusion.adaptive_reward`): 1[correct] - reference + delta * 1[no thinking], where the reference is the
   slow half's accuracy on that problem (the accuracy the constraint keeps).
3. GRPO (`duomind.rl.grpo`): group-relative advantages, the clipped token-level loss on auto prompt +
   response, one update per batch. The first response token is the choice (`<think>` or the answer), so
   the choice is learnt together with the answers.

Design choices *(ours)*: the behaviour log-probabilities are the current policy's on the auto prompt (one
update per batch: the ratio starts at 1); AdaptThink's ratio to its 50/50 sampling policy would scale the
rarer choice's gradient by its probability, so a mode the model almost never picks would hardly move. The
reference cancels in group-relative advantages; it is kept so the logged reward reads as AdaptThink's.
Advantages are not divided by the group's standard deviation (`scale_std`), as AdaptThink optimises the
reward itself: scaled, the small bonus delta becomes as strong as correctness in groups where every answer is
wrong, and the model learns to stop thinking everywhere (a first run went from P(think) 0.87 to 0.47 in 11
steps while slow answers stayed about 3x as accurate as fast ones).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from duomind.tasks import Task


@dataclass
class AdaptConfig:
    """Settings of the AdaptThink stage (`DualConfig.rl_*`).

    `lr` is small because Adam turns noisy policy gradients into full-size steps: on the 0.85M default model,
    2e-4 took slow-mode sample accuracy from 0.45 to about 0.15 within 15 steps; 2e-5 keeps it.
    """

    steps: int = 200
    prompts: int = 16
    group: int = 8
    delta: float = 0.05
    lr: float = 2e-5
    temperature: float = 1.0
    max_new_tokens: int = 176
    scale_std: bool = False
    save_every: int = 25
    seed: int = 0


def rollouts(model, tok, tasks: Sequence[Task], group: int, temperature: float, max_new_tokens: int,
             seed: int) -> list[list[list[int]]]:
    """Per task: `group` responses, the first half sampled in fast mode, the second half in slow mode.

    Slow responses open with `<think>` by construction (as the serving engine forces it), so each half is
    exactly one of the two choices auto mode has.
    """
    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tokenizer import THINK, chat_prompt, special_ids

    think = special_ids(tok)[THINK]
    if think is None:
        raise ValueError(f"the tokenizer has no {THINK} token: AdaptThink needs a model trained with thinking spans.")
    half = group // 2
    out: list[list[list[int]]] = [[] for _ in tasks]
    for mode, opening in (("fast", []), ("slow", [think])):
        prompts = [chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode=mode) + opening
                   for t in tasks for _ in range(half)]
        replies = generate(model, prompts, max_new_tokens=max_new_tokens - len(opening), temperature=temperature,
                           stop_tokens=stop_ids(tok), seed=seed)
        for i, r in enumerate(replies):
            out[i // half].append(opening + list(r))
    return out


def train_adapt(init: Path, out: Path, tasks: Sequence[Task], cfg: AdaptConfig, progress: bool = True) -> Path:
    """Run (or resume) the AdaptThink stage from checkpoint `init`; returns the final checkpoint."""
    import torch

    from duomind.distill.loop import Verifier, reply_text, reward_record
    from duomind.progress import progress_bar
    from duomind.reasoner.fusion import adaptive_reward
    from duomind.rl.grpo import Sample, behaviour_logprobs, group_advantages, grpo_loss
    from duomind.tokenizer import chat_prompt, load_tokenizer
    from duomind.train.checkpoint import latest_checkpoint, load_model, load_training_state, save_checkpoint
    from duomind.train.loop import param_groups

    if cfg.group < 2 or cfg.group % 2:
        raise ValueError(f"group={cfg.group}: AdaptThink needs an even group (half fast, half slow), at least 2.")
    done = latest_checkpoint(out) if out.is_dir() else None
    model, tok = load_model(done or init).train(), load_tokenizer(init)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=cfg.lr, betas=(0.9, 0.99))
    step = load_training_state(done, model, opt)["adapt"]["step"] if done else 0
    if step >= cfg.steps:
        return done
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    order = list(tasks)
    random.Random(cfg.seed).shuffle(order)
    half = cfg.group // 2
    verifier = Verifier()
    metrics_path = out / "metrics.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if metrics_path.is_file():  # rows logged after the checkpoint we resume from are redone
        kept = [x for x in metrics_path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
        metrics_path.write_text("".join(x + "\n" for x in kept))
    try:
        with progress_bar("adaptthink", cfg.steps, enabled=progress) as advance:
            advance(step)
            while step < cfg.steps:
                batch = [order[(step * cfg.prompts + i) % len(order)] for i in range(cfg.prompts)]
                model.eval()
                with torch.no_grad():
                    groups = rollouts(model, tok, batch, cfg.group, cfg.temperature, cfg.max_new_tokens,
                                      cfg.seed * 100003 + step)
                samples, advantages, log = [], [], {"fast_correct": 0, "slow_correct": 0, "think_prob": 0.0}
                for t, responses in zip(batch, groups):
                    modes = ["fast"] * half + ["slow"] * half
                    texts = [reply_text(tok, r) for r in responses]
                    correct = verifier.check([reward_record(t, x, m, str(j))
                                              for j, (x, m) in enumerate(zip(texts, modes))])
                    reference = sum(correct[half:]) / half
                    rewards = [adaptive_reward(c, m == "slow", reference, cfg.delta) for c, m in zip(correct, modes)]
                    log["fast_correct"] += sum(correct[:half])
                    log["slow_correct"] += sum(correct[half:])
                    auto = chat_prompt(tok, [{"role": "user", "content": t.prompt}], mode="auto")
                    with torch.no_grad():
                        old = behaviour_logprobs(model, auto, responses, pad, cfg.temperature)
                    # P(<think> first | auto prompt): the slow half opens with <think>
                    log["think_prob"] += math.exp(old[half][0]) if old[half] else 0.0
                    samples += [Sample(auto, r, lp, step, reward=rw, correct=c)
                                for r, lp, rw, c in zip(responses, old, rewards, correct)]
                    advantages += group_advantages(rewards, cfg.scale_std)
                model.train()
                loss, metrics = grpo_loss(model, samples, advantages, pad, temperature=cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                n = cfg.prompts * half
                row = {"step": step, "fast_accuracy": log["fast_correct"] / n, "slow_accuracy": log["slow_correct"] / n,
                       "auto_think_prob": log["think_prob"] / cfg.prompts, **metrics}
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if step % cfg.save_every == 0 or step == cfg.steps:
                    model.eval()
                    done = save_checkpoint(out, step, model, tok, opt, {"adapt": {"step": step}})
                advance(1)
    finally:
        verifier.close()
    return done
