"""One training loop for pre-training, SFT and knowledge distillation.

AdamW with linear warmup and cosine decay, gradient accumulation and clipping, optional bf16 autocast,
data parallelism over `torchrun` (gloo on CPU, NCCL on GPU). The loss of a step is normalised by the number
of target tokens in the whole global batch, so any split into micro-batches and processes gives the same
gradient. Checkpoints are atomic and complete; an interrupted run resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from duomind.config import ModelConfig, TrainConfig
from duomind.moe import LoadMeter, update_router_bias
from duomind.progress import progress_bar
from duomind.train.checkpoint import (
    latest_checkpoint,
    load_model,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
)
from duomind.train.data import IGNORE, BatchOrder, Examples, build_examples, collate, read_records
from duomind.train.metrics import MetricsLog, plot_loss


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/Inf; no checkpoint was written for the bad step."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over target positions, and the target mask (B, T-1)."""
    target = labels[:, 1:]
    mask = target != IGNORE
    # shift the labels, not the logits: slicing (B, T, V) logits would copy them
    shifted = F.pad(target, (0, 1), value=IGNORE)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE, reduction="sum")
    return ce, mask


def kd_loss_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed forward KL(teacher || student) at `temperature` over masked positions, scaled by T^2 (Hinton et al.)."""
    s = student[:, :-1][mask].float() / temperature
    t = teacher[:, :-1][mask].float() / temperature
    log_t = F.log_softmax(t, dim=-1)
    kl = (log_t.exp() * (log_t - F.log_softmax(s, dim=-1))).sum()
    return kl * temperature**2


def accumulate(model, teacher, ex: Examples, idx: list[int], n_target: int, cfg: TrainConfig, pad_id: int,
               device, autocast=nullcontext, meter: LoadMeter | None = None) -> tuple[torch.Tensor, int]:
    """Forward/backward `idx` in micro-batches, adding to .grad; the loss is summed then divided by
    `n_target` (the global batch's target-token count), so the split into micro-batches does not matter.

    MoE models: each micro-batch's balance loss (`aux_loss`, times `router_aux_loss_coef`) is weighted by its
    share of the target tokens and added to the gradient; it is kept out of the returned loss (which stays the
    LM loss) and summed into `meter.aux`. `meter` also collects the expert loads of every forward."""
    loss_total, n_tokens = torch.zeros((), device=device), 0
    coef = getattr(model.config, "router_aux_loss_coef", 0.0) if meter else 0.0
    for m in range(0, len(idx), cfg.micro_batch_size):
        ids, labels = collate(ex, idx[m:m + cfg.micro_batch_size], pad_id)
        ids, labels = ids.to(device), labels.to(device)
        n_tokens += int((labels != IGNORE).sum())
        with autocast():
            out = model(ids)
        logits = out.logits
        ce, mask = token_losses(logits, labels)
        loss = ce
        if teacher is not None:
            with torch.no_grad(), autocast():
                t_logits = teacher(ids).logits
            kl = kd_loss_sum(logits, t_logits, mask, cfg.kd_temperature)
            loss = cfg.kd_alpha * kl + (1 - cfg.kd_alpha) * ce
        loss = loss / max(n_target, 1)
        objective = loss
        aux = getattr(out, "aux_loss", None)
        if meter:
            meter.update()
            if aux is not None:
                share = float(mask.sum()) / max(n_target, 1)
                meter.aux += float(aux.detach()) * share
                if coef:
                    objective = loss + coef * share * aux
        objective.backward()
        loss_total += loss.detach()
    return loss_total, n_tokens


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def build_model(cfg: TrainConfig, tokenizer) -> torch.nn.Module:
    """The model to train: loaded from `init_from`, or fresh from the preset plus overrides."""
    from duomind.model import DuoMind

    if cfg.init_from:
        return load_model(cfg.init_from).train()
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id, "vocab_size": len(tokenizer)}
    mc = ModelConfig.from_preset(cfg.model_preset, **{**ids, **cfg.model})
    if mc.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size={mc.vocab_size} is smaller than the tokenizer ({len(tokenizer)} "
                         "tokens); drop the vocab_size override or raise it.")
    torch.manual_seed(cfg.seed)
    return DuoMind(mc)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms, biases and embeddings are left undecayed."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def evaluate(model, ex: Examples, cfg: TrainConfig, pad_id: int, device, autocast) -> float:
    """Mean per-token cross-entropy over the first eval_batches micro-batches of `ex`."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        n = min(len(ex), cfg.eval_batches * cfg.micro_batch_size)
        for start in range(0, n, cfg.micro_batch_size):
            ids, labels = collate(ex, list(range(start, min(start + cfg.micro_batch_size, n))), pad_id)
            with autocast():
                logits = model(ids.to(device)).logits
            ce, mask = token_losses(logits, labels.to(device))
            total, count = total + float(ce), count + int(mask.sum())
    model.train()
    return total / max(count, 1)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a training run; returns the final checkpoint directory."""
    from duomind.tokenizer import load_tokenizer

    rank, world, device = _setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.global_batch_size % (cfg.micro_batch_size * world):
        raise ValueError(f"global_batch_size={cfg.global_batch_size} must be a multiple of micro_batch_size x "
                         f"processes = {cfg.micro_batch_size} x {world}.")
    out = Path(cfg.out_dir)
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    finished = latest_checkpoint(out)
    if finished is not None and json.loads((finished / "trainer_state.json").read_text())["step"] >= end:
        return out / f"step-{end:06d}"  # a pipeline re-entering a finished run: no data to tokenize, no model to build
    tok_dir = cfg.tokenizer or (resolve_checkpoint(cfg.init_from) if cfg.init_from else None)
    if not tok_dir:
        raise ValueError("no tokenizer: set `tokenizer: DIR` (train one with `duomind tokenizer train`) "
                         "or `init_from` a checkpoint that has one.")
    tokenizer = load_tokenizer(tok_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ex = build_examples(tokenizer, read_records(cfg.data), cfg.mode, cfg.seq_len, cfg.packing)
    eval_ex = (build_examples(tokenizer, read_records(cfg.eval_data), cfg.mode, cfg.seq_len, cfg.packing)
               if cfg.eval_data else None)

    model = build_model(cfg, tokenizer).to(device).train()
    teacher = None
    if cfg.mode == "kd":
        teacher = load_model(cfg.teacher, device=device)
        if teacher.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"teacher vocab ({teacher.config.vocab_size}) differs from the student's "
                             f"({model.config.vocab_size}); distillation on logits needs one tokenizer.")
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)

    start = 0
    resume_from = latest_checkpoint(out)
    if resume_from is not None:
        start = load_training_state(resume_from, model, opt)["step"]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(yaml.safe_dump(vars(cfg) | {"model": dict(cfg.model)}, sort_keys=False))
    log = MetricsLog(out / "metrics.jsonl", enabled=rank == 0)

    use_bf16 = cfg.precision == "bf16-mixed" or (cfg.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    order = BatchOrder(len(ex), cfg.global_batch_size, cfg.seed)
    per_rank = cfg.global_batch_size // world
    params = [p for p in model.parameters() if p.requires_grad]
    meter = LoadMeter(model)  # empty (falsy) for dense models
    bias_rate = getattr(model.config, "router_bias_update_rate", 0.0)
    last_ckpt = resume_from
    with progress_bar("train", end, enabled=cfg.progress and rank == 0, completed=start, unit="step") as advance:
        for step in range(start, end):
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order.indices(step)
            n_target = sum(sum(1 for y in ex.labels[i][1:] if y != IGNORE) for i in idx)
            mine = idx[rank * per_rank:(rank + 1) * per_rank]
            loss_total, n_tokens = accumulate(model, teacher, ex, mine, n_target, cfg, pad_id, device, autocast,
                                              meter)
            moe_metrics = {}
            if meter:
                meter.all_reduce()
                moe_metrics = meter.metrics()
                if bias_rate:
                    update_router_bias(model, meter, bias_rate)  # same on every rank: the loads are all-reduced
                meter.reset()
            if world > 1:
                flat = torch.cat([p.grad.flatten() for p in params] + [loss_total.view(1)])
                dist.all_reduce(flat)
                offset = 0
                for p in params:
                    p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                    offset += p.numel()
                loss_total = flat[-1]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            loss_value, norm_value = float(loss_total), float(grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"loss became {loss_value} (grad norm {norm_value}) at step {step}; {kept} and is intact. "
                    f"Lower the learning rate (now {lr:.3g}), lengthen warmup, or check the data, then resume.")
            opt.step()
            opt.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            done = step + 1
            if done % cfg.log_every == 0 or done == end or done == start + 1:
                log.write(step=done, loss=loss_value, lr=lr, grad_norm=norm_value,
                          tokens_per_s=n_tokens * world / elapsed, step_time_s=elapsed, **moe_metrics)
            advance(1, info=f"loss {loss_value:.3f} · {n_tokens * world / elapsed:,.0f} tok/s")
            if eval_ex is not None and rank == 0 and (
                    (cfg.eval_every and done % cfg.eval_every == 0) or done == end):
                log.write(step=done, eval_loss=evaluate(model, eval_ex, cfg, pad_id, device, autocast))
            if done % cfg.save_every == 0 or done == end:
                if rank == 0:
                    last_ckpt = save_checkpoint(out, done, model, tokenizer, opt, {"step": done}, cfg.keep_last)
                if world > 1:
                    dist.barrier()
    if rank == 0:
        plot_loss(log.rows(), out / "loss.png", title=f"{cfg.mode} · {out.name}")
    return out / f"step-{end:06d}"
