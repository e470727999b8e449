"""Audio in: load, downmix, resample to 16 kHz, 80-bin log-mel in torch, global mean-variance normalisation.

The front end of Dolphin (arXiv 2503.20212): 16 kHz mono, n_fft 512, 25 ms window (400), 10 ms hop (160),
80 mel bins, log, then global CMVN with statistics gathered on the training set and saved beside the model.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE, N_FFT, WIN_LENGTH, HOP_LENGTH, N_MELS = 16000, 512, 400, 160, 80
MIN_SECONDS = 0.1  # shorter clips hold no speech worth decoding (the encoder needs >= 7 frames)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono at `sr`.

    wav/flac/ogg (and anything else libsndfile reads) go through soundfile; other formats (mp3, m4a, ...)
    through ffmpeg when it is installed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, corrupt, has an unreadable sample rate, or needs ffmpeg.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {str(path)!r} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise ValueError(f"audio file {str(path)!r} is empty (0 bytes); record or export it again.")
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        data, rate = _ffmpeg_read(path, sr, err)
    if rate is None or not (1000 <= rate <= 384000):
        raise ValueError(f"audio file {str(path)!r} has an unreadable sample rate ({rate}); re-encode it, e.g. "
                         f"`ffmpeg -i IN -ar 16000 -ac 1 OUT.wav`.")
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if not np.all(np.isfinite(mono)):
        raise ValueError(f"audio file {str(path)!r} holds NaN/Inf samples; it is corrupt.")
    return resample(mono, int(rate), sr)


def _ffmpeg_read(path: Path, sr: int, cause: Exception) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None:
        raise ValueError(f"cannot read {str(path)!r}: libsndfile does not know this format or the file is corrupt "
                         f"({cause}). Convert it to wav/flac, or install ffmpeg (`apt-get install ffmpeg`) for other "
                         "formats.") from cause
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(sr), "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise ValueError(f"cannot read {str(path)!r}: ffmpeg failed ({msg[0]}); the file is corrupt or not audio.")
    pcm = np.frombuffer(proc.stdout, dtype=np.int16).astype(np.float32) / 32768.0
    return pcm[:, None], sr


def read_bytes(data: bytes, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an in-memory audio file (wav/flac/ogg) to float32 mono at `sr`."""
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"cannot decode audio bytes: {err}") from err
    return resample(samples.mean(axis=1), int(rate), sr)


def resample(x: np.ndarray, orig: int, new: int, zeros: int = 16, rolloff: float = 0.945) -> np.ndarray:
    """Band-limited resampling by windowed-sinc polyphase filtering (Kaiser-like Hann window).

    The ratio is reduced by the gcd; each of the `new` output phases gets its own sinc kernel sampled at the
    input grid, cut off at `rolloff` x the lower Nyquist frequency, and one strided conv1d applies them all.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig == new or x.size == 0:
        return x
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates
    width = math.ceil(zeros * orig / cutoff)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig  # input times, reduced units
    phase = -torch.arange(new, dtype=torch.float64)[:, None] / new  # (new, 1)
    t = (phase + idx) * cutoff  # (new, K): distance in cut-off periods
    window = torch.where(t.abs() <= zeros, torch.cos(t * math.pi / zeros / 2) ** 2, torch.zeros_like(t))
    kernels = torch.special.sinc(t) * window * cutoff / orig
    wav = torch.from_numpy(x).double()[None, None]
    wav = torch.nn.functional.pad(wav, (width, width + orig))
    out = torch.nn.functional.conv1d(wav, kernels[:, None].to(wav.dtype), stride=orig)  # (1, new, frames)
    out = out.transpose(1, 2).reshape(-1)
    length = math.ceil(new * x.size / orig)
    return out[:length].float().numpy()


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Triangular mel filterbank (HTK mel scale), shape (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f):
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(hz_to_mel(torch.tensor(0.0))), float(hz_to_mel(torch.tensor(sr / 2))),
                          n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


_MEL: dict[str, torch.Tensor] = {}


def log_mel(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """80-bin log-mel spectrogram of 16 kHz audio, shape (frames, 80), frames = 1 + len // 160."""
    wav = torch.as_tensor(audio, dtype=torch.float32)
    if "fb" not in _MEL:
        _MEL["fb"], _MEL["win"] = mel_filters(), torch.hann_window(WIN_LENGTH)
    spec = torch.stft(wav, N_FFT, HOP_LENGTH, WIN_LENGTH, _MEL["win"], center=True, return_complex=True)
    power = spec.abs() ** 2  # (n_fft/2+1, frames)
    return torch.log(torch.clamp(_MEL["fb"] @ power, min=1e-10)).T.contiguous()


class GlobalCMVN:
    """Global per-bin mean and variance over the training set, applied to every feature frame."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean.float(), std.float().clamp(min=1e-5)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    @classmethod
    def fit(cls, feature_iter) -> GlobalCMVN:
        total, sq, n = torch.zeros(N_MELS, dtype=torch.float64), torch.zeros(N_MELS, dtype=torch.float64), 0
        for f in feature_iter:
            f = f.double()
            total += f.sum(0)
            sq += (f * f).sum(0)
            n += f.shape[0]
        if n == 0:
            raise ValueError("no audio to compute feature statistics from; the training manifest is empty.")
        mean = total / n
        return cls(mean.float(), (sq / n - mean * mean).clamp(min=1e-10).sqrt().float())

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> GlobalCMVN:
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"feature statistics {str(path)!r} are missing; the model directory is "
                                    "incomplete (it should hold cmvn.safetensors beside model.safetensors).")
        t = load_file(str(path))
        return cls(t["mean"], t["std"])


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_i, 80) features into (B, T_max, 80) zero-padded, with lengths (B,)."""
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    out = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lengths
