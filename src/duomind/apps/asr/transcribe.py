"""Long audio -> segments: VAD into <= 30 s speech pieces, batched encoding, per-segment decoding.

Each segment carries its own detected (or given) language and region, as Dolphin (arXiv 2503.20212)
decodes 30 s windows one by one. The real-time factor is processing time / audio duration (features,
VAD, network and search; file reading excluded).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from duomind.apps.asr.audio import MIN_SECONDS, SAMPLE_RATE, GlobalCMVN, load_audio, log_mel, pad_features
from duomind.apps.asr.decoding import DecodingOptions, decode
from duomind.apps.asr.model import Dolphin, load_config, load_weights
from duomind.apps.asr.tokenizer import AsrTokenizer
from duomind.apps.asr.vad import VadOptions, speech_segments

DEFAULT_MODEL = Path(__file__).resolve().parents[4] / "assets" / "asr"
FORMATS = ("txt", "json", "srt", "vtt")


@dataclass
class Segment:
    text: str
    language: str
    region: str
    start: float
    end: float
    words: list[dict] = field(default_factory=list)


@dataclass
class Transcript:
    segments: list[Segment]
    rtf: float
    duration: float

    def to_dict(self) -> dict:
        segs = [{k: v for k, v in asdict(s).items() if k != "words" or v} for s in self.segments]
        return {"segments": segs, "rtf": self.rtf}

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


@dataclass
class Pipeline:
    """A loaded model with its tokenizer and feature statistics."""

    model: Dolphin
    tok: AsrTokenizer
    cmvn: GlobalCMVN
    path: Path


def load_pipeline(path: str | Path | None = None) -> Pipeline:
    """Load a released model directory (default: `$DUOMIND_ASR_MODEL` or the shipped `assets/asr`)."""
    from duomind.train.checkpoint import MARKER, verify_checkpoint

    path = Path(path or os.environ.get("DUOMIND_ASR_MODEL") or DEFAULT_MODEL)
    if not path.is_dir():
        raise FileNotFoundError(f"ASR model directory {str(path)!r} does not exist; pass --model DIR, or train the "
                                "default with `duomind asr train --config recipes/asr/default.yaml`.")
    if (path / "latest").is_file() and not (path / "config.json").is_file():  # a run dir: its newest checkpoint
        path = path / (path / "latest").read_text().strip()
    if (path / MARKER).exists():
        verify_checkpoint(path)
    model = Dolphin(load_config(path))
    load_weights(model, path)
    tok = AsrTokenizer.load(path)
    if tok.vocab_size != model.config.vocab_size:
        raise ValueError(f"{str(path)!r}: tokenizer has {tok.vocab_size} tokens but the model {model.config.vocab_size}; "
                         "they belong to different runs.")
    return Pipeline(model.eval(), tok, GlobalCMVN.load(path / "cmvn.safetensors"), path)


@torch.no_grad()
def transcribe(pipe: Pipeline, audio: str | Path | np.ndarray, options: DecodingOptions = DecodingOptions(),
               batch_size: int = 8, vad: VadOptions = VadOptions()) -> Transcript:
    """Transcribe a file or a 16 kHz float array into segments (text, language, region, start, end).

    Silence, steady noise and clips shorter than 0.1 s give no segments (never made-up text).
    """
    wav = load_audio(audio) if isinstance(audio, str | Path) else np.asarray(audio, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"audio array must be 1-D mono 16 kHz samples, got shape {wav.shape}.")
    if not np.all(np.isfinite(wav)):
        raise ValueError("audio holds NaN/Inf samples; it is corrupt.")
    duration = len(wav) / SAMPLE_RATE
    t0 = time.perf_counter()
    spans = speech_segments(wav, SAMPLE_RATE, vad) if duration >= MIN_SECONDS else []
    segments: list[Segment] = []
    for b in range(0, len(spans), batch_size):
        batch = spans[b:b + batch_size]
        feats = [pipe.cmvn(log_mel(wav[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)])) for s, e in batch]
        x, lengths = pad_features(feats)
        enc, enc_len = pipe.model.encode(x, lengths)
        for (s, e), res in zip(batch, decode(pipe.model, pipe.tok, enc, enc_len, options)):
            if res.text:
                words = [{**w, "start": round(s + w["start"], 3), "end": round(min(s + w["end"], e), 3)} for w in res.words]
                segments.append(Segment(res.text, res.language, res.region, round(s, 3), round(e, 3), words))
    elapsed = time.perf_counter() - t0
    return Transcript(segments, elapsed / duration if duration else 0.0, duration)


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(result: Transcript, fmt: str = "txt") -> str:
    """The transcript as txt (one segment a line), json, srt or vtt."""
    if fmt == "txt":
        return "".join(f"{s.text}\n" for s in result.segments)
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=1) + "\n"
    if fmt == "srt":
        return "\n".join(f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n"
                         for i, s in enumerate(result.segments, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n".join(f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n"
                                        for s in result.segments)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}.")
