"""Joint CTC-attention training of the Dolphin model (arXiv 2503.20212) on JSONL manifests.

Loss = ctc_weight * CTC(encoder) + (1 - ctc_weight) * label-smoothed CE(decoder), CTC weight 0.3 as in the
paper. The decoder learns the whole prompt after `<sos>` (`<lang> <region> <asr> <notimestamp>` then the text
and `<eos>`), which is what lets it detect language and region. SpecAugment (arXiv 1904.08779: frequency and
time masks) on the normalised features. Checkpoints go through `duomind.train.checkpoint` (atomic,
safetensors, sealed); a run directory with a checkpoint is resumed exactly (model, optimizer, RNG, data
position), and `time_limit_minutes` stops a run cleanly at a checkpoint so long training can be split.

Manifest lines: `{"audio": path (relative to the manifest), "text", "lang", "region"}`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from duomind.apps.asr.audio import MIN_SECONDS, SAMPLE_RATE, GlobalCMVN, load_audio, log_mel, pad_features
from duomind.apps.asr.model import Dolphin, load_weights, preset, save_model
from duomind.apps.asr.tokenizer import AsrTokenizer, check_pair, train_tokenizer
from duomind.progress import progress_bar
from duomind.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_optimizer_tensors,
    save_checkpoint,
    seal,
    verify_checkpoint,
)
from duomind.train.metrics import MetricsLog, plot_loss


@dataclass
class AsrTrainConfig:
    """One ASR training run.

    Attributes:
        train_manifest: JSONL of training utterances.
        eval_manifest: Optional held-out JSONL; CTC-greedy CER on `eval_utterances` of it (evenly spaced) is logged.
        out_dir: Run directory (checkpoints, metrics.jsonl, loss.png); an existing run is resumed.
        release_dir: When training reaches `max_steps`, the bare model (config, weights, tokenizer, CMVN
            statistics) is written here, e.g. `assets/asr`.
        model_preset: tiny | base | small.
        model: Overrides of the preset's fields.
        text_vocab: Subword pieces of the unigram tokenizer trained on the transcripts.
        max_steps / batch_size / lr / min_lr / warmup_steps / weight_decay / grad_clip: Optimisation
            (AdamW, linear warmup, cosine decay).
        ctc_weight: Weight of the CTC loss (0.3 in Dolphin).
        label_smoothing: Of the decoder cross-entropy.
        freq_masks / freq_width / time_masks / time_width: SpecAugment: masks per utterance, widest
            frequency mask in bins, widest time mask as a fraction of the utterance.
        save_every: Steps between checkpoints.
        time_limit_minutes: Stop after a checkpoint once this much wall time has passed (0: no limit);
            running the same command again resumes.
        eval_utterances: Held-out utterances scored at each checkpoint.
        seed: Everything random derives from it.
        progress: Show the progress bar.
    """

    train_manifest: str = ""
    eval_manifest: str = ""
    out_dir: str = "runs/asr"
    release_dir: str = ""
    model_preset: str = "tiny"
    model: dict = field(default_factory=dict)
    text_vocab: int = 400
    max_steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    freq_masks: int = 2
    freq_width: int = 10
    time_masks: int = 2
    time_width: float = 0.05
    save_every: int = 200
    time_limit_minutes: float = 0.0
    eval_utterances: int = 100
    seed: int = 0
    progress: bool = True


def read_manifest(path: str | Path) -> list[dict]:
    """Parse a JSONL manifest, resolving audio paths against its directory; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist; make one with `duomind asr synth OUT`.")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err}).") from err
        missing = [k for k in ("audio", "text", "lang", "region") if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing field(s) {missing}; each line needs audio, text, lang, region.")
        try:
            check_pair(row["lang"], row["region"])
        except ValueError as err:
            raise ValueError(f"{path}:{n}: {err}") from err
        audio = Path(row["audio"])
        rows.append({**row, "audio": str(audio if audio.is_absolute() else path.parent / audio)})
    if not rows:
        raise ValueError(f"manifest {str(path)!r} has no utterances.")
    return rows


def load_features(rows: list[dict], progress: bool = True, label: str = "features") -> list[torch.Tensor]:
    """Raw (un-normalised) log-mel features of every utterance, kept in memory as float16."""
    feats = []
    with progress_bar(label, len(rows), enabled=progress, unit="utt") as advance:
        for r in rows:
            wav = load_audio(r["audio"])
            if len(wav) < MIN_SECONDS * SAMPLE_RATE:
                raise ValueError(f"{r['audio']}: shorter than {MIN_SECONDS} s; remove it from the manifest.")
            feats.append(log_mel(wav).half())
            advance()
    return feats


def targets(tok: AsrTokenizer, row: dict) -> tuple[list[int], list[int]]:
    """(decoder tokens, text tokens): `<sos><lang><region><asr><notimestamp> text <eos>` and the text alone."""
    text = tok.encode(row["text"])
    return tok.prefix(row["lang"], row["region"]) + text + [tok.eos], text


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, cfg: AsrTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Frequency and time masking (arXiv 1904.08779) in place on (B, T, F) normalised features (mask = 0)."""
    b, _, nf = x.shape
    for i in range(b):
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(nf - w, 1), (1,), generator=gen))
            x[i, :, f0:f0 + w] = 0
        n = int(lengths[i])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, max(int(cfg.time_width * n), 1) + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(n - w, 1), (1,), generator=gen))
            x[i, t0:t0 + w] = 0
    return x


def joint_loss(model: Dolphin, feats, lengths, dec_tokens: list[list[int]], text_tokens: list[list[int]],
               cfg: AsrTrainConfig) -> tuple[torch.Tensor, dict]:
    """ctc_weight * CTC + (1 - ctc_weight) * CE; returns the loss and its parts."""
    width = max(len(t) for t in dec_tokens)
    ids = torch.zeros(len(dec_tokens), width, dtype=torch.long)
    for i, t in enumerate(dec_tokens):
        ids[i, : len(t)] = torch.tensor(t)
    labels = torch.full_like(ids, -100)
    for i, t in enumerate(dec_tokens):
        labels[i, : len(t) - 1] = torch.tensor(t[1:])
    log_probs, enc_len, logits = model(feats, lengths, ids)
    flat = torch.tensor([t for tt in text_tokens for t in tt], dtype=torch.long)
    ctc = F.ctc_loss(log_probs.transpose(0, 1), flat, enc_len, torch.tensor([len(t) for t in text_tokens]),
                     blank=0, reduction="sum", zero_infinity=True) / len(text_tokens)
    # both losses summed per utterance (as ESPnet does), so the CTC weight means what it says
    att = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                          label_smoothing=cfg.label_smoothing, reduction="sum") / len(dec_tokens)
    loss = cfg.ctc_weight * ctc + (1 - cfg.ctc_weight) * att
    return loss, {"ctc": ctc.item(), "att": att.item()}


class _Bundle:
    """Adapts the ASR model + CMVN to `save_checkpoint`'s `save_pretrained` protocol (atomic, sealed)."""

    def __init__(self, model: Dolphin, tok: AsrTokenizer, cmvn: GlobalCMVN) -> None:
        self.model, self.tok, self.cmvn = model, tok, cmvn

    def named_parameters(self):
        return self.model.named_parameters()

    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        save_model(self.model, directory)
        self.tok.save(directory)
        self.cmvn.save(Path(directory) / "cmvn.safetensors")


def release(model: Dolphin, tok: AsrTokenizer, cmvn: GlobalCMVN, directory: str | Path) -> Path:
    """Write the bare model directory (what `transcribe` loads), sealed so a partial copy is refused.

    Written beside `directory` and swapped in by rename; the previous model is moved aside first and
    deleted only once the new one is in place, so a crash leaves one complete model.
    """
    import os
    import shutil
    import tempfile

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{directory.name}-"))
    _Bundle(model, tok, cmvn).save_pretrained(tmp)
    for f in [tmp, *tmp.iterdir()]:  # readable by others, not mkdtemp's private 0700 / 0600
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    seal(tmp, {"kind": "duomind-asr"})
    old = directory.with_name(f".old-{directory.name}-{tmp.name[-8:]}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _spread(rows: list[dict], n: int) -> list[dict]:
    """`n` rows evenly spaced through the manifest: every language, since manifests are grouped by language."""
    step = max(len(rows) // max(n, 1), 1)
    return rows[::step][:n]


def _batches(lengths: list[int], batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """One epoch of batches: shuffle, sort each window of 32 batches by length (less padding), shuffle batches."""
    rng = random.Random(seed * 100003 + epoch)
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    window = 32 * batch_size
    batches = []
    for w in range(0, len(perm), window):
        chunk = sorted(perm[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def train(cfg: AsrTrainConfig) -> Path:
    """Train (or resume) and return the run directory's newest checkpoint."""
    from duomind.train.loop import lr_at

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(cfg.train_manifest)
    resume = latest_checkpoint(out)
    if resume is not None:
        tok = AsrTokenizer.load(resume)
        cmvn = GlobalCMVN.load(resume / "cmvn.safetensors")
    else:
        tok = train_tokenizer((r["text"] for r in rows), cfg.text_vocab)
    raw = load_features(rows, cfg.progress, "load audio")
    if resume is None:
        cmvn = GlobalCMVN.fit(f.float() for f in raw)
    feats = [cmvn(f.float()).half() for f in raw]
    del raw
    examples = [targets(tok, r) for r in rows]
    eval_rows = _spread(read_manifest(cfg.eval_manifest), cfg.eval_utterances) if cfg.eval_manifest else []

    model = Dolphin(preset(cfg.model_preset, vocab_size=tok.vocab_size, **cfg.model))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    step = 0
    if resume is not None:
        step = _restore(resume, model, opt)
    log = MetricsLog(out / "metrics.jsonl")
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    start, last = time.time(), resume
    frames = [f.shape[0] for f in feats]
    per_epoch = len(_batches(frames, cfg.batch_size, 0, cfg.seed))
    if per_epoch == 0:
        raise ValueError(f"{len(feats)} utterances are fewer than one batch of {cfg.batch_size}; lower batch_size.")
    model.train()
    with progress_bar("asr train", cfg.max_steps, enabled=cfg.progress, completed=step, unit="step") as advance:
        while step < cfg.max_steps:
            epoch, pos = divmod(step, per_epoch)
            idx = _batches(frames, cfg.batch_size, epoch, cfg.seed)[pos]
            x, lengths = pad_features([feats[i].float() for i in idx])
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
            x = spec_augment(x, lengths, cfg, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            loss, parts = joint_loss(model, x, lengths, [examples[i][0] for i in idx],
                                     [examples[i][1] for i in idx], cfg)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {float(loss)} at step {step}; lower lr (now {cfg.lr}) or check "
                                   "the data. The last checkpoint is intact.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            log.write(step=step, loss=loss.item(), lr=opt.param_groups[0]["lr"], grad_norm=float(gnorm), **parts)
            advance(info=f"loss {loss.item():.3f} ctc {parts['ctc']:.2f} att {parts['att']:.2f}")
            out_of_time = cfg.time_limit_minutes and time.time() - start > cfg.time_limit_minutes * 60
            if step % cfg.save_every == 0 or step == cfg.max_steps or out_of_time:
                row = {"step": step}
                if eval_rows:
                    row["eval_cer"] = evaluate_cer(model, tok, cmvn, eval_rows)
                    model.train()
                    log.write(**row)
                last = save_checkpoint(out, step, _Bundle(model, tok, cmvn), None, opt,
                                       {"step": step, "epoch": epoch, **row})
                if out_of_time and step < cfg.max_steps:
                    print(f"time limit reached at step {step}; run the same command again to resume.")
                    break
    plot_loss(log.rows(), out / "loss.png", "ASR joint CTC-attention loss")
    if step >= cfg.max_steps and cfg.release_dir:
        model.eval()
        release(model, tok, cmvn, cfg.release_dir)
        print(f"released the model to {cfg.release_dir}")
    return last


def _restore(path: Path, model: Dolphin, opt: torch.optim.Optimizer) -> int:
    """Model weights, optimizer, RNG and step from a complete checkpoint."""
    from safetensors.torch import load_file

    verify_checkpoint(path)
    load_weights(model, path)
    state = json.loads((path / "trainer_state.json").read_text())
    if "optimizer" not in state or not (path / "optimizer.safetensors").is_file():
        raise CheckpointError(f"{str(path)!r} has no optimizer state; it is a released model, not a training "
                              "checkpoint. Start a new run directory to fine-tune from it.")
    names = {id(p): n for n, p in model.named_parameters()}
    load_optimizer_tensors(opt, names, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    return int(state["step"])


@torch.no_grad()
def evaluate_cer(model: Dolphin, tok: AsrTokenizer, cmvn: GlobalCMVN, rows: list[dict]) -> float:
    """Mean CTC-greedy character error rate over `rows` (language given), for training logs."""
    from duomind.apps.asr.decoding import ctc_greedy
    from duomind.apps.asr.metrics import cer

    model.eval()
    errs = []
    for r in rows:
        x = cmvn(log_mel(load_audio(r["audio"])))[None]
        enc, enc_len = model.encode(x, torch.tensor([x.shape[1]]))
        ids = ctc_greedy(model.ctc_log_probs(enc)[0, : int(enc_len[0])])
        errs.append(cer(r["text"], tok.decode(ids), r["lang"]))
    return sum(errs) / max(len(errs), 1)


def train_cli(cfg: AsrTrainConfig) -> None:
    """`duomind asr train`: joint CTC-attention training from a recipe (resumes an existing run)."""
    print(f"newest checkpoint: {train(cfg)}")

