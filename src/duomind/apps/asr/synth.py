"""A multilingual synthetic speech corpus from espeak-ng, with transcripts and held-out speakers.

No pretrained speech weights or recorded corpora can be had offline, so the ASR pipeline trains on speech we
synthesise: short utterances drawn from a small lexicon per language, spoken by espeak-ng voices in several
voice variants ("speakers"), speeds and pitches, then augmented with reverberation and noise. Whole speakers
(voice variants) are held out for the test split, so test scores measure generalisation to unseen voices.

Output layout::

    OUT/audio/<split>/<lang>-<region>-<n>.flac   16 kHz mono
    OUT/train.jsonl, OUT/test.jsonl              {"audio", "text", "lang", "region", "speaker"} per line
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np

from duomind.apps.asr.audio import SAMPLE_RATE, resample

# language -> (region, espeak-ng voice) for each accent we synthesise
VOICES: dict[str, list[tuple[str, str]]] = {
    "en": [("US", "en-us"), ("GB", "en-gb-x-rp")], "zh": [("CN", "cmn")], "yue": [("HK", "yue")],
    "ja": [("JP", "ja")], "ko": [("KR", "ko")], "vi": [("VN", "vi")], "hi": [("IN", "hi")], "ar": [("SA", "ar")],
}
# a small lexicon per language keeps the task learnable on a CPU budget; Japanese is kana (espeak-ng reads no kanji)
LEXICON: dict[str, list[str]] = {
    "en": "hello thank you today weather friend water school book house time good morning night".split(),
    "zh": "你好 我们 今天 天气 很好 学习 中国 朋友 喜欢 吃饭 工作 时间".split(),
    "yue": "你好 今日 天氣 食飯 朋友 返工 香港 鍾意 多謝 時間 唔該 好".split(),
    "ja": "こんにちは ありがとう きょう てんき わたし ともだち すし にほん がっこう みず やま さくら".split(),
    "ko": "안녕하세요 감사합니다 오늘 날씨 친구 학교 사랑 한국 물 산 시간 음식".split(),
    "vi": ["xin chào", "cảm ơn", "hôm nay", "trời", "đẹp", "bạn", "học", "nước", "nhà", "thời gian", "ăn", "sách"],
    "hi": "नमस्ते धन्यवाद आज मौसम दोस्त पानी खाना भारत समय स्कूल घर किताब".split(),
    "ar": "مرحبا شكرا اليوم الطقس صديق ماء طعام مدرسة كتاب بيت وقت جميل".split(),
}
NO_SPACES = {"zh", "yue", "ja"}  # written without spaces between words
TRAIN_SPEAKERS = ["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f5", "klatt"]
TEST_SPEAKERS = ["m6", "f4", "klatt2"]
PITCH = {"m": 40, "f": 60, "k": 50}  # base pitch per variant family (espeak 0-99)


def check_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; install it with `apt-get install espeak-ng` "
                           "(Debian/Ubuntu; `make setup` does this when it can) and run again.")
    return exe


def speak(text: str, voice: str, variant: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng speech as float32 16 kHz mono."""
    import soundfile as sf

    proc = subprocess.run([check_espeak(), "-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch),
                           "--stdout", text], capture_output=True, timeout=60)
    if proc.returncode != 0 or len(proc.stdout) < 100:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace')[:200]}")
    wav, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return resample(wav, rate, SAMPLE_RATE)


def reverb(x: np.ndarray, rng: random.Random) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise, RT60 0.15-0.5 s."""
    rt60 = rng.uniform(0.15, 0.5)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    gen = np.random.default_rng(rng.randrange(2**32))
    ir = gen.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0 / max(rng.uniform(0.3, 1.0), 1e-3)  # direct path dominates
    size = 1 << (len(x) + n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    return (wet / (np.abs(wet).max() + 1e-9) * np.abs(x).max()).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, rng: random.Random) -> np.ndarray:
    """White or brown-ish noise at `snr_db` relative to the speech power."""
    gen = np.random.default_rng(rng.randrange(2**32))
    noise = gen.standard_normal(len(x))
    if rng.random() < 0.5:  # brown-ish: integrated white noise, high-passed by removing a slow drift
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    p_sig = float(np.mean(x**2)) + 1e-12
    noise *= np.sqrt(p_sig / (10 ** (snr_db / 10)) / (np.mean(noise**2) + 1e-12))
    return (x + noise).astype(np.float32)


def utterance(lang: str, rng: random.Random, words: tuple[int, int]) -> str:
    picked = [rng.choice(LEXICON[lang]) for _ in range(rng.randint(*words))]
    return ("" if lang in NO_SPACES else " ").join(picked)


def make_clip(lang: str, voice: str, speaker: str, text: str, rng: random.Random, augment: bool) -> np.ndarray:
    pitch = min(max(PITCH.get(speaker[0], 50) + rng.randint(-8, 8), 0), 99)
    wav = speak(text, voice, speaker, rng.randint(140, 200), pitch)
    if augment and rng.random() < 0.3:
        wav = reverb(wav, rng)
    pad = [np.zeros(int(rng.uniform(0.05, 0.3) * SAMPLE_RATE), np.float32) for _ in range(2)]
    wav = np.concatenate([pad[0], wav * rng.uniform(0.3, 0.9), pad[1]])
    if augment and rng.random() < 0.6:
        wav = add_noise(wav, rng.uniform(12, 35), rng)
    return np.clip(wav, -1.0, 1.0)


def synthesize(out: str | Path, langs: list[str] | None = None, per_lang: int = 300, test_per_lang: int = 40,
               words: tuple[int, int] = (2, 4), seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Write the corpus; returns the manifest paths {"train": ..., "test": ...}.

    Args:
        out: Output directory.
        langs: Language codes (keys of `VOICES`); all by default.
        per_lang / test_per_lang: Training / test utterances per language (split over its regions).
        words: Inclusive range of words per utterance.
        seed: Makes the corpus reproducible.
    """
    import soundfile as sf

    from duomind.progress import progress_bar

    langs = list(langs or VOICES)
    unknown = [lang for lang in langs if lang not in VOICES]
    if unknown:
        raise ValueError(f"no synthetic voice for language(s) {unknown}; choose from {', '.join(VOICES)}.")
    check_espeak()
    out = Path(out)
    rng = random.Random(seed)
    manifests = {}
    for split, n, speakers in (("train", per_lang, TRAIN_SPEAKERS), ("test", test_per_lang, TEST_SPEAKERS)):
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        with progress_bar(f"synth {split}", n * len(langs), enabled=progress, unit="utt") as advance:
            for lang in langs:
                for i in range(n):
                    region, voice = VOICES[lang][i % len(VOICES[lang])]
                    speaker = speakers[rng.randrange(len(speakers))]
                    text = utterance(lang, rng, words)
                    wav = make_clip(lang, voice, speaker, text, rng, augment=True)
                    rel = Path("audio") / split / f"{lang}-{region}-{i:05d}.flac"
                    sf.write(str(out / rel), wav, SAMPLE_RATE)
                    rows.append({"audio": str(rel), "text": text, "lang": lang, "region": region,
                                 "speaker": f"{voice}+{speaker}"})
                    advance()
        manifests[split] = out / f"{split}.jsonl"
        manifests[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifests
