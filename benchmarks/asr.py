"""Dolphin-style ASR (arXiv 2503.20212): CER per language, language ID, and speed against a same-size Whisper.

1. Accuracy on held-out synthetic speakers (voices never heard in training): character error rate per
   language with joint CTC/attention beam search and the language detected (`cer`), the same with the
   CTC head alone (`cer_ctc`), and language-identification accuracy (`lid_accuracy`; region too).
2. Speed: real-time factor of `transcribe` (VAD, features, network, search) for CTC-only and for beam
   search, and of a Hugging Face Whisper model of the same width and depth with random weights on the same
   audio (its features padded to 30 s as Whisper requires, greedy decoding of as many tokens as our model
   emitted, with its KV cache). The three are timed in alternating rounds.

    python benchmarks/asr.py --threads 1            # the shipped model (assets/asr) on the test corpus
    python benchmarks/asr.py --quick --threads 1    # a tiny random model, a few clips; seconds
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

ROOT = Path(__file__).resolve().parent.parent
CORPUS = _common.CACHE / "asr" / "corpus"


def quick_setup(tmp: Path) -> tuple[Path, list[dict]]:
    """A tiny random model and a few clips (espeak-ng speech when installed, otherwise a speech-like buzz)."""
    import soundfile as sf
    import torch

    from duomind.apps.asr.audio import GlobalCMVN
    from duomind.apps.asr.model import Dolphin, preset
    from duomind.apps.asr.tokenizer import train_tokenizer
    from duomind.apps.asr.train import read_manifest, release

    if shutil.which("espeak-ng"):
        from duomind.apps.asr.synth import synthesize

        rows = read_manifest(synthesize(tmp / "corpus", ["en", "zh"], 2, 2, progress=False)["test"])
    else:
        t = np.arange(2 * 16000) / 16000
        buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
        wav = np.concatenate([np.zeros(4000), 0.2 * buzz / np.abs(buzz).max(), np.zeros(4000)]).astype(np.float32)
        sf.write(tmp / "buzz.wav", wav, 16000)
        rows = [{"audio": str(tmp / "buzz.wav"), "text": "hello", "lang": "en", "region": "US"}] * 2
    tok = train_tokenizer([r["text"] for r in rows] * 5, 40)
    torch.manual_seed(0)
    model = Dolphin(preset("tiny", vocab_size=tok.vocab_size, d_model=32, heads=2, encoder_layers=2,
                           decoder_layers=1, ffn_dim=64, cgmlp_dim=64, subsample_channels=8)).eval()
    with torch.no_grad():
        model.ctc_head.bias[0] = -5.0  # a random model that says something, so every path runs
    return release(model, tok, GlobalCMVN(torch.zeros(80), torch.ones(80) * 4), tmp / "model"), rows


def accuracy(pipe, rows: list[dict], beam_size: int) -> dict:
    from duomind.apps.asr.decoding import DecodingOptions
    from duomind.apps.asr.metrics import cer
    from duomind.apps.asr.transcribe import transcribe

    per_lang: dict[str, dict[str, list[float]]] = {}
    lid, region_ok, n_lid, examples = 0, 0, 0, []
    for r in rows:
        wav = _load(r)
        beam = transcribe(pipe, wav, DecodingOptions(beam_size=beam_size))
        ctc = transcribe(pipe, wav, DecodingOptions(ctc_only=True))
        d = per_lang.setdefault(r["lang"], {"beam": [], "ctc": []})
        d["beam"].append(cer(r["text"], beam.text, r["lang"]))
        d["ctc"].append(cer(r["text"], ctc.text, r["lang"]))
        if beam.segments:  # the language of the longest segment
            seg = max(beam.segments, key=lambda s: s.end - s.start)
            n_lid += 1
            lid += seg.language == r["lang"]
            region_ok += seg.language == r["lang"] and seg.region == r["region"]
        if len(examples) < 12 and len(d["beam"]) == 1:
            examples.append({"lang": r["lang"], "ref": r["text"], "beam": beam.text, "ctc": ctc.text})
    cer_beam = {k: statistics.mean(v["beam"]) for k, v in sorted(per_lang.items())}
    cer_ctc = {k: statistics.mean(v["ctc"]) for k, v in sorted(per_lang.items())}
    return {"cer": cer_beam, "cer_ctc": cer_ctc, "mean_cer": statistics.mean(cer_beam.values()),
            "mean_cer_ctc": statistics.mean(cer_ctc.values()),
            "lid_accuracy": lid / len(rows), "region_accuracy": region_ok / len(rows),
            "utterances_without_output": len(rows) - n_lid, "utterances": len(rows), "examples": examples}


_AUDIO: dict[str, np.ndarray] = {}


def _load(row: dict) -> np.ndarray:
    from duomind.apps.asr.audio import load_audio

    if row["audio"] not in _AUDIO:
        _AUDIO[row["audio"]] = load_audio(row["audio"])
    return _AUDIO[row["audio"]]


def whisper_same_size(cfg, vocab: int):
    """A random-weight HF Whisper with our width, heads, depth and vocabulary."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    wc = WhisperConfig(vocab_size=vocab, num_mel_bins=80, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
                       decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads,
                       decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
                       max_source_positions=1500, max_target_positions=448, pad_token_id=0, bos_token_id=2,
                       eos_token_id=3, decoder_start_token_id=2)
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(wc).eval()


def whisper_transcribe(model, wav: np.ndarray, n_tokens: int) -> None:
    """Whisper's path: log-mel padded to 30 s (3000 frames), encoder, greedy decode of n_tokens with its cache."""
    import torch

    from duomind.apps.asr.audio import log_mel

    with torch.no_grad():
        feats = log_mel(wav).T[None]  # (1, 80, T)
        feats = torch.nn.functional.pad(feats, (0, 3000 - feats.shape[-1]))[..., :3000]
        enc = model.model.encoder(feats).last_hidden_state
        ids = torch.tensor([[2, 4, 5, 6]])  # <sos> and three prompt tokens, like <lang><region><asr>
        past = None
        for _ in range(n_tokens + 1):
            out = model(encoder_outputs=(enc,), decoder_input_ids=ids if past is None else ids[:, -1:],
                        cache=past, use_cache=True)
            past = out.cache
            ids = torch.cat([ids, out.logits[:, -1:].argmax(-1)], dim=1)


def speed(pipe, rows: list[dict], rounds: int, beam_size: int) -> dict:
    from duomind.apps.asr.decoding import DecodingOptions
    from duomind.apps.asr.transcribe import transcribe

    wavs = [_load(r) for r in rows]
    seconds = sum(len(w) for w in wavs) / 16000
    tokens = [max(len(pipe.tok.encode(transcribe(pipe, w, DecodingOptions(beam_size=beam_size, silence_guard=False)).text)), 1)
              for w in wavs]
    whisper = whisper_same_size(pipe.model.config, pipe.model.config.vocab_size)
    runs = {
        "ctc": lambda: [transcribe(pipe, w, DecodingOptions(ctc_only=True)) for w in wavs],
        # the search always runs here, even where the CTC head hears nothing (the guard would skip it)
        "beam": lambda: [transcribe(pipe, w, DecodingOptions(beam_size=beam_size, silence_guard=False)) for w in wavs],
        "whisper": lambda: [whisper_transcribe(whisper, w, n) for w, n in zip(wavs, tokens)],
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # neither slot is favoured
        for k in order:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append((time.perf_counter() - t0) / seconds)
    st = {k: _common.stats(v) for k, v in times.items()}
    return {"rtf_ctc": st["ctc"]["median"], "rtf_beam": st["beam"]["median"],
            "rtf_whisper_same_size": st["whisper"]["median"], "rtf_stats": st, "audio_seconds_timed": seconds,
            "speedup_ctc_vs_whisper": st["whisper"]["median"] / st["ctc"]["median"],
            "speedup_beam_vs_whisper": st["whisper"]["median"] / st["beam"]["median"],
            "params": {"dolphin": pipe.model.num_parameters(), "whisper": sum(p.numel() for p in whisper.parameters())}}


def plot(result: dict, path: Path) -> None:
    plt = _common.figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    langs = list(result["cer"])
    x = np.arange(len(langs))
    a.bar(x - 0.2, [result["cer"][k] for k in langs], 0.4, label="beam (joint CTC/attention)")
    a.bar(x + 0.2, [result["cer_ctc"][k] for k in langs], 0.4, label="CTC only")
    a.axhline(0.15, color="k", ls="--", lw=1, label="goal 0.15")
    a.set_xticks(x, langs)
    a.set_ylabel("CER (held-out speakers)")
    a.set_title(f"CER per language; LID accuracy {result['lid_accuracy']:.2f}")
    a.legend(fontsize=8)
    names = ["rtf_ctc", "rtf_beam", "rtf_whisper_same_size"]
    st = result["rtf_stats"]
    b.bar(range(3), [result[n] for n in names], yerr=[[result[n] - st[k]["min"] for n, k in zip(names, st)],
                                                      [st[k]["max"] - result[n] for n, k in zip(names, st)]])
    b.axhline(0.1, color="k", ls="--", lw=1, label="goal 0.1 (CTC)")
    b.set_xticks(range(3), ["ours CTC", "ours beam", "Whisper same size"])
    b.set_ylabel("real-time factor (lower is faster)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: assets/asr)")
    p.add_argument("--manifest", type=Path, default=CORPUS / "test.jsonl", help="held-out test manifest")
    p.add_argument("--speed_utterances", type=int, default=40, help="utterances in the timed set")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    p.add_argument("--beam_size", type=int, default=5)
    args = p.parse_args()
    out = _common.out_dir(args)
    import torch

    from duomind.apps.asr.train import read_manifest
    from duomind.apps.asr.transcribe import load_pipeline

    load_before = os.getloadavg()[0]  # timings are only fair on a quiet machine (the timing lane)
    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        if args.quick:
            model_dir, rows = quick_setup(Path(tmp))
            timed_rows, rounds = rows[:2], 2
        else:
            model_dir, rows = args.model, read_manifest(args.manifest)
            step = max(len(rows) // args.speed_utterances, 1)
            timed_rows, rounds = rows[::step][: args.speed_utterances], args.rounds
        pipe = load_pipeline(model_dir)
        result = {"model": str(pipe.path), "test_manifest": str(args.manifest) if not args.quick else "quick",
                  "beam_size": args.beam_size, "threads": torch.get_num_threads()}
        result.update(accuracy(pipe, rows, args.beam_size))
        result.update(speed(pipe, timed_rows, rounds, args.beam_size))
    goals = {"mean_cer<=0.15": result["mean_cer"] <= 0.15, "lid_accuracy>=0.95": result["lid_accuracy"] >= 0.95,
             "rtf_ctc<=0.1": result["rtf_ctc"] <= 0.1,
             "faster_than_whisper": result["rtf_ctc"] < result["rtf_whisper_same_size"]}
    result["goals_met"] = goals
    result["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    result["quick"] = args.quick
    print(f"mean CER beam {result['mean_cer']:.3f} / CTC {result['mean_cer_ctc']:.3f}; LID {result['lid_accuracy']:.3f}")
    print(f"RTF CTC {result['rtf_ctc']:.4f}, beam {result['rtf_beam']:.4f}, Whisper same size "
          f"{result['rtf_whisper_same_size']:.4f}; goals {goals}")
    _common.write("asr", result, out)
    plot(result, out / "asr.png")
    print(f"wrote {out / 'asr.png'}")


if __name__ == "__main__":
    main()
