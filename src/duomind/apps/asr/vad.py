"""Energy-based voice-activity detection: long audio -> speech segments of at most 30 s.

A frame (25 ms, 10 ms hop) is speech when its energy is `margin_db` above the recording's noise floor (its
10th-percentile frame energy) and above an absolute floor, and its spectrum is not flat like white noise
(spectral flatness below `max_flatness`; stationary coloured noise stays under the energy margin). Short
gaps are bridged, short blips dropped, segments padded, and any segment longer than `max_seconds` is cut
at its quietest frame, recursively. Silence and steady noise therefore give no segments at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duomind.apps.asr.audio import SAMPLE_RATE


@dataclass(frozen=True)
class VadOptions:
    """Thresholds and durations (seconds) of the segmentation."""

    margin_db: float = 10.0
    floor_db: float = -55.0
    max_flatness: float = 0.5
    min_speech: float = 0.15
    min_silence: float = 0.35
    pad: float = 0.1
    max_seconds: float = 30.0


def frame_stats(audio: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Energy (dB) and spectral flatness of 25 ms frames every 10 ms."""
    win, hop = int(0.025 * sr), int(0.01 * sr)
    if len(audio) < win:
        return np.zeros(0), np.zeros(0)
    n = 1 + (len(audio) - win) // hop
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), win)[::hop][:n]
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    power = np.abs(np.fft.rfft(frames * np.hanning(win), axis=1)) ** 2 + 1e-12
    flatness = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
    return energy, flatness


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where mask is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def speech_segments(audio: np.ndarray, sr: int = SAMPLE_RATE, opts: VadOptions = VadOptions()) -> list[tuple[float, float]]:
    """(start, end) seconds of the speech in `audio`, each at most `opts.max_seconds` long."""
    energy, flatness = frame_stats(np.asarray(audio), sr)
    if energy.size == 0:
        return []
    threshold = max(opts.floor_db, float(np.percentile(energy, 10)) + opts.margin_db)
    active = (energy > threshold) & (flatness < opts.max_flatness)
    hop = 0.01
    runs = _runs(active)
    merged: list[list[int]] = []
    for s, e in runs:  # bridge short gaps
        if merged and (s - merged[-1][1]) * hop < opts.min_silence:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    total = len(audio) / sr
    out = []
    for s, e in merged:
        if (e - s) * hop < opts.min_speech:
            continue
        start, end = max(0.0, s * hop - opts.pad), min(total, e * hop + 0.025 + opts.pad)
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], float(end))
        else:
            out.append((float(start), float(end)))
    return [piece for seg in out for piece in _split(seg, energy, opts.max_seconds)]


def _split(seg: tuple[float, float], energy: np.ndarray, max_seconds: float) -> list[tuple[float, float]]:
    """Cut a too-long segment at its quietest frame in the middle half, recursively."""
    start, end = seg
    if end - start <= max_seconds:
        return [seg]
    lo, hi = int((start + (end - start) / 4) / 0.01), int((end - (end - start) / 4) / 0.01)
    hi = min(max(hi, lo + 1), len(energy))
    cut = (lo + int(np.argmin(energy[lo:hi]))) * 0.01 if lo < len(energy) else (start + end) / 2
    cut = min(max(cut, start + 0.01), end - 0.01)
    return _split((start, cut), energy, max_seconds) + _split((cut, end), energy, max_seconds)
