"""Training recipe of the small VLM: caption pre-alignment, then instruction tuning (full or LoRA).

Stage 1 (align): single-image captions; a fresh model trains everything, a model whose decoder is already
trained (`freeze_decoder`) trains only the patch encoder and projector, as LLaVA does (arXiv 2304.08485).
Stage 2 (instruct): `init_from` the aligned checkpoint on multi-image instruction data (Med-MIM JSON,
MedHallTune JSONL, TSV), all weights or LoRA adapters on the decoder (`lora_rank`, via peft).

The loop reuses the core trainer's parts: the cosine schedule, parameter groups, deterministic batch order
(the batch of a step is a function of (seed, step)), atomic safetensors checkpoints with optimizer and RNG
state (an interrupted run resumes exactly), the metrics log and the progress bar.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class MedTrainConfig:
    """`duomind med train`: the VLM training recipe.

    Args:
        data: Training data file(s): Med-MIM .json, MedHallTune .jsonl or VLMEvalKit .tsv (a list, or paths
            joined by commas).
        out_dir: Run directory (checkpoints step-XXXXXX, latest, metrics.jsonl, loss.png).
        init_from: A VLM checkpoint to start from (e.g. the caption-aligned run); empty = a fresh model.
        tokenizer: Tokenizer directory for a fresh model; empty = train a BPE over the data (saved in the run).
        vocab_size: Vocabulary of a tokenizer trained here.
        decoder_preset: DuoMind model preset of a fresh decoder (duomind.config.PRESETS).
        decoder: Overrides of the decoder's ModelConfig fields.
        image_size: Side of the (grayscale) input images; other sizes are resized.
        patch_size: Side of a patch; (image_size / patch_size)^2 tokens per image.
        vision_hidden: Width of the patch encoder.
        max_images: Most images per prompt (size of the image-index embedding).
        freeze_decoder: Train only the patch encoder and projector (pre-alignment on a trained decoder).
        lora_rank: 0 = full fine-tuning; > 0 = LoRA adapters of this rank on the decoder (vision side full).
        max_steps: Optimizer steps in all (the cosine schedule ends here).
        stop_at: Stop (with a checkpoint) at this step to continue later; 0 = run to max_steps.
        batch_size: Items per step.
        lr: Peak learning rate.
        min_lr: Final learning rate.
        warmup_steps: Linear warmup steps.
        weight_decay: AdamW weight decay on matrices.
        grad_clip: Gradient-norm clip (0 = none).
        seed: Seed of initialisation and batch order.
        save_every: Checkpoint interval in steps (and at the end).
        keep_last: Complete checkpoints kept.
        threads: torch threads (0 = torch's default).
        progress: Show the progress bar.
        time_limit_s: Stop with a checkpoint once this many seconds of training have passed (0 = no limit);
            run again to continue (a time-boxed chunk on a shared machine).
    """

    data: str | list[str] = ""
    out_dir: str = "runs/med-vlm"
    init_from: str = ""
    tokenizer: str = ""
    vocab_size: int = 512
    decoder_preset: str = "demo"
    decoder: dict = field(default_factory=dict)
    image_size: int = 32
    patch_size: int = 16
    vision_hidden: int = 128
    max_images: int = 4
    freeze_decoder: bool = False
    lora_rank: int = 0
    max_steps: int = 600
    stop_at: int = 0
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 200
    keep_last: int = 2
    threads: int = 0
    progress: bool = True
    time_limit_s: float = 0.0


def _encode_all(items, tok, cfg, model_cfg):
    from duomind.apps.medical.model import Encoded, encode, pixels_of

    out = []
    limit = model_cfg.decoder["max_position_embeddings"]
    for it in items:
        ids, labels = encode(tok, model_cfg, it, with_answer=True)
        if len(ids) > limit:
            raise ValueError(f"item {it.id} needs {len(ids)} positions (image tokens included) but the decoder has "
                             f"max_position_embeddings={limit}; raise it (decoder: {{max_position_embeddings: N}}).")
        out.append(Encoded(ids, labels, pixels_of(it, model_cfg.image_size)))
    return out


def _fresh_model(cfg: MedTrainConfig, items):
    from duomind.apps.medical.model import VLM, VLMConfig, build_tokenizer, image_token_id
    from duomind.config import ModelConfig
    from duomind.tokenizer import load_tokenizer

    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        tok = build_tokenizer([t for it in items for t in (it.prompt, it.answer or "")], cfg.vocab_size)
    image_token_id(tok)
    dec = ModelConfig.from_preset(cfg.decoder_preset, **{
        "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False, **cfg.decoder})
    torch.manual_seed(cfg.seed)
    vcfg = VLMConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, vision_hidden=cfg.vision_hidden,
                     max_images=cfg.max_images, image_token_id=image_token_id(tok), decoder=dec.to_dict())
    return VLM(vcfg), tok


def train_vlm(cfg: MedTrainConfig) -> Path:
    """Run (or resume) one training stage; returns the final checkpoint directory."""
    from duomind.apps.medical.data import load_items, split_paths
    from duomind.apps.medical.model import add_lora, build_from_config, collate, load_vlm, read_config
    from duomind.progress import progress_bar
    from duomind.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
    from duomind.train.data import IGNORE, BatchOrder
    from duomind.train.loop import TrainingDiverged, lr_at, param_groups
    from duomind.train.metrics import MetricsLog, plot_loss

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    paths = split_paths(cfg.data)
    if not paths:
        raise ValueError("no training data: pass --data FILE (make some with `duomind med synth OUT`).")
    items = [it for p in paths for it in load_items(p)]
    if any(it.answer is None for it in items):
        raise ValueError("some training items have no answer (assistant turn / gpt4_answer); training needs them.")
    out = Path(cfg.out_dir)
    resume = latest_checkpoint(out)
    if resume is not None:  # the run's own config (LoRA included) wins over flags
        model, tok = build_from_config(read_config(resume)), load_vlm(resume)[1]
    elif cfg.init_from:
        model, tok = load_vlm(cfg.init_from)
        if cfg.lora_rank and not model.config.lora:
            add_lora(model, cfg.lora_rank)
    else:
        model, tok = _fresh_model(cfg, items)
    if cfg.freeze_decoder:
        for p in model.decoder.parameters():
            p.requires_grad = False
    model.train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    start = load_training_state(resume, model, opt)["step"] if resume is not None else 0
    data = _encode_all(items, tok, cfg, model.config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(__import__("json").dumps(asdict(cfg), indent=1))
    log = MetricsLog(out / "metrics.jsonl")
    pad = tok.pad_token_id
    order = BatchOrder(len(data), cfg.batch_size, cfg.seed)
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    last = resume
    began = time.perf_counter()
    with progress_bar("med train", end, enabled=cfg.progress, completed=start, unit="step") as advance:
        for step in range(start, end):
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            ids, labels, mask, pixels, index = collate([data[i] for i in order.indices(step)], pad)
            loss = model(ids, pixels, index, attention_mask=mask, labels=labels).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            value = float(loss.detach())
            if not (math.isfinite(value) and math.isfinite(float(norm))):
                raise TrainingDiverged(f"loss became {value} at step {step}; the last good checkpoint ({last}) is "
                                       f"intact. Lower lr (now {lr:.3g}) or check the data, then resume.")
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            n_tok = int((labels != IGNORE).sum())
            if done % 10 == 0 or done == end:
                log.write(step=done, loss=value, lr=lr, grad_norm=float(norm), step_time_s=time.perf_counter() - t0,
                          target_tokens=n_tok)
            advance(1, info=f"loss {value:.3f}")
            out_of_time = cfg.time_limit_s and time.perf_counter() - began > cfg.time_limit_s
            if done % cfg.save_every == 0 or done == end or out_of_time:
                last = save_checkpoint(out, done, model, tok, opt, {"step": done}, cfg.keep_last)
            if out_of_time:
                end = done
                break
    plot_loss(log.rows(), out / "loss.png", title=f"med train · {out.name}")
    return out / f"step-{end:06d}"


def train_cli(cfg: MedTrainConfig) -> None:
    """Train the small multi-image VLM (caption pre-alignment, instruction tuning; full or LoRA)."""
    path = train_vlm(cfg)
    print(f"checkpoint: {path}")
