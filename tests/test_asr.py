"""ASR pipeline (Dolphin, arXiv 2503.20212) on procedural audio and tiny random models: invariants, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("soundfile")
import soundfile as sf  # noqa: E402

from duomind.apps.asr import audio as A  # noqa: E402
from duomind.apps.asr.decoding import (  # noqa: E402
    CTCPrefixScorer,
    DecodingOptions,
    _text_mask,
    beam_search,
    ctc_greedy,
    decode,
    detect_language,
    forced_align,
)
from duomind.apps.asr.model import Dolphin, preset  # noqa: E402
from duomind.apps.asr.tokenizer import PAIRS, SPECIALS, AsrTokenizer, check_pair, train_tokenizer  # noqa: E402
from duomind.apps.asr.vad import VadOptions, speech_segments  # noqa: E402

SR = A.SAMPLE_RATE
TEXTS = ["hello friend", "good morning", "你好朋友", "こんにちは", "xin chào bạn", "안녕하세요 친구"] * 20
TINY = dict(d_model=32, heads=2, encoder_layers=2, decoder_layers=1, ffn_dim=64, cgmlp_dim=64, subsample_channels=8,
            cgmlp_kernel=3)


@pytest.fixture(scope="module")
def tok() -> AsrTokenizer:
    return train_tokenizer(TEXTS, text_vocab=60)


@pytest.fixture(scope="module")
def model(tok) -> Dolphin:
    torch.manual_seed(0)
    return Dolphin(preset("tiny", vocab_size=tok.vocab_size, dropout=0.0, **TINY)).eval()


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def voice_like(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A harmonic buzz with a syllable-rate envelope: speech-like energy and spectrum, no words."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    rng = np.random.default_rng(seed)
    return (0.2 * x * env / np.abs(x).max() + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


# --- audio ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000])
def test_resample_keeps_frequency_and_amplitude(orig):
    t = np.arange(orig) / orig
    y = A.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), orig, SR)
    assert len(y) == SR
    ref = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    assert np.abs(y[1000:-1000] - ref[1000:-1000]).max() < 1e-3


def test_resample_removes_content_above_new_nyquist():
    t = np.arange(48000) / 48000
    y = A.resample(np.sin(2 * np.pi * 12000 * t).astype(np.float32), 48000, SR)  # 12 kHz > 8 kHz Nyquist
    assert np.abs(y[1000:-1000]).max() < 0.02


def test_log_mel_shape_and_loudness_order():
    quiet, loud = A.log_mel(tone(440, 1.0, 0.01)), A.log_mel(tone(440, 1.0, 0.5))
    assert quiet.shape == (1 + SR // A.HOP_LENGTH, A.N_MELS)
    assert float(loud.mean()) > float(quiet.mean()) + 5  # 34 dB louder
    peak_bin = int(loud.mean(0).argmax())
    assert 5 <= peak_bin <= 25  # 440 Hz sits in the low mel bins


def test_load_audio_downmixes_and_resamples(tmp_path):
    clip = tone(300, 0.5)  # 8000 samples, written at several rates
    sf.write(tmp_path / "a.wav", np.stack([clip, clip], axis=1), 44100)
    sf.write(tmp_path / "a.flac", clip, 8000)
    sf.write(tmp_path / "a.ogg", clip, 16000)
    for name, rate in (("a.wav", 44100), ("a.flac", 8000), ("a.ogg", 16000)):
        x = A.load_audio(tmp_path / name)
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) - len(clip) * SR / rate) <= 2


def test_load_audio_bad_input_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        A.load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00garbage" * 50)
    with pytest.raises(ValueError, match="corrupt|cannot read"):
        A.load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "ok.wav", tone(300, 0.2), 16000)
    raw = bytearray((tmp_path / "ok.wav").read_bytes())
    raw[24:28] = (0).to_bytes(4, "little")  # sample rate field of the fmt chunk -> 0
    (tmp_path / "norate.wav").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sample rate|corrupt|cannot read"):
        A.load_audio(tmp_path / "norate.wav")


def test_cmvn_normalises_and_round_trips(tmp_path):
    feats = [torch.randn(50, 80) * 3 + 7 for _ in range(4)]
    cmvn = A.GlobalCMVN.fit(feats)
    z = torch.cat([cmvn(f) for f in feats])
    assert z.mean().abs() < 1e-4 and (z.std(0) - 1).abs().max() < 0.05
    cmvn.save(tmp_path / "cmvn.safetensors")
    again = A.GlobalCMVN.load(tmp_path / "cmvn.safetensors")
    assert torch.equal(again.mean, cmvn.mean) and torch.equal(again.std, cmvn.std)


# --- tokenizer -----------------------------------------------------------------------------------------

def test_tokenizer_layout_and_prefix(tok):
    assert [tok.piece(i) for i in range(6)] == ["<blank>", "<unk>", "<sos>", "<eos>", "<asr>", "<notimestamp>"]
    assert tok.piece(tok.lang_ids["zh"]) == "<zh>" and tok.piece(tok.region_ids["CN"]) == "<CN>"
    assert tok.piece(tok.time_token(1.0)) == "<1.00>" and tok.piece(tok.time_token(30.0)) == "<30.00>"
    assert tok.prefix("zh", "CN") == [tok.sos, tok.lang_ids["zh"], tok.region_ids["CN"], tok.asr, tok.notimestamp]
    for text in ("hello friend", "你好朋友", "xin chào bạn"):
        ids = tok.encode(text)
        assert min(ids) >= tok.text_begin and tok.decode(ids) == text
    assert tok.vocab_size > len(SPECIALS)


def test_unknown_codes_are_rejected():
    check_pair("zh", "CN")
    for lang, region, match in (("xx", None, "unknown language"), ("zh", "ZZ", "unknown region"),
                                ("ja", "CN", "not a valid region"), (None, "CN", "without a language")):
        with pytest.raises(ValueError, match=match):
            check_pair(lang, region)
        with pytest.raises(ValueError, match=match):
            DecodingOptions(language=lang, region=region)


# --- model ---------------------------------------------------------------------------------------------

def test_encoder_ignores_padding_and_decoder_is_causal(model, tok):
    torch.manual_seed(1)
    x = torch.randn(2, 120, 80)
    with torch.no_grad():
        alone, n = model.encode(x[:1, :70], torch.tensor([70]))
        batch, lens = model.encode(x, torch.tensor([70, 120]))
        assert int(lens[0]) == int(n[0]) == alone.shape[1]
        assert torch.allclose(alone[0], batch[0, : alone.shape[1]], atol=1e-5)
        toks = torch.randint(tok.text_begin, tok.vocab_size, (1, 8))
        changed = toks.clone()
        changed[0, 5:] = tok.text_begin
        a, b = model.decode(toks, alone, n), model.decode(changed, alone, n)
        assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_presets_match_the_paper_sizes():
    base, small = preset("base"), preset("small")
    assert (base.d_model, base.heads, base.encoder_layers, base.decoder_layers) == (512, 8, 6, 6)
    assert (small.d_model, small.heads, small.encoder_layers, small.decoder_layers) == (768, 12, 12, 12)
    with pytest.raises(ValueError, match="unknown ASR model preset"):
        preset("huge")


# --- decoding ------------------------------------------------------------------------------------------

def test_ctc_prefix_score_of_full_labelling_equals_ctc_loss():
    torch.manual_seed(0)
    x = torch.randn(25, 9).log_softmax(-1)
    y = [3, 5, 5, 7, 2, 2]
    scorer = CTCPrefixScorer(x)
    r = scorer.initial()
    last = None
    for t in y:
        new, _ = scorer.extend(r, last, torch.tensor([t, 1]))
        r, last = new[:, :, 0], t
    loss = F.ctc_loss(x[:, None], torch.tensor([y]), torch.tensor([25]), torch.tensor([len(y)]), reduction="sum")
    assert CTCPrefixScorer.final(r) == pytest.approx(-float(loss), abs=1e-4)


def test_ctc_greedy_collapses_repeats_and_blanks():
    path = [0, 3, 3, 0, 3, 5, 5, 0, 0, 4]
    lp = torch.full((len(path), 6), -10.0)
    lp[torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert ctc_greedy(lp) == [3, 3, 5, 4]


def test_forced_alignment_recovers_known_frames():
    frames = {2: 3, 6: 5, 7: 5, 11: 3}  # token 3 at frame 2, token 5 at 6-7, token 3 again at 11
    lp = torch.full((14, 6), -8.0)
    lp[:, 0] = -0.1
    for t, c in frames.items():
        lp[t, c], lp[t, 0] = -0.1, -8.0
    assert forced_align(lp.log_softmax(-1), [3, 5, 3]) == [(2, 2), (6, 7), (11, 11)]


def _greedy_reference(model, tok, enc, n, prefix, limit):
    ids, mask = list(prefix), _text_mask(tok, model.config.vocab_size)
    for _ in range(limit + 1):
        nxt = int((model.decode(torch.tensor([ids]), enc[None, :n], torch.tensor([n]), last_only=True)[0, 0] + mask).argmax())
        if nxt == tok.eos:
            break
        ids.append(nxt)
    return ids[len(prefix):]


def test_beam_one_without_ctc_is_greedy_and_wider_beams_score_no_worse(model, tok):
    torch.manual_seed(3)
    with torch.no_grad():
        enc, n = model.encode(torch.randn(1, 200, 80), torch.tensor([200]))
    prefix = tok.prefix("en", "US")
    opts = DecodingOptions(beam_size=1, ctc_weight=0.0, length_bonus=0.0, max_tokens=12)
    got, _ = beam_search(model, tok, enc[0], int(n[0]), prefix, None, opts)
    assert got == _greedy_reference(model, tok, enc[0], int(n[0]), prefix, 12)
    ctc = model.ctc_log_probs(enc)[0]
    scores = [beam_search(model, tok, enc[0], int(n[0]), prefix, ctc,
                          DecodingOptions(beam_size=b, ctc_weight=0.3, max_tokens=12))[1] for b in (1, 4)]
    assert scores[1] >= scores[0] - 1e-6


def test_hotword_bonus_puts_the_hotword_in_the_output(model, tok):
    torch.manual_seed(4)
    with torch.no_grad():
        enc, n = model.encode(torch.randn(1, 200, 80), torch.tensor([200]))
    prefix = tok.prefix("en", "US")
    plain = DecodingOptions(beam_size=2, ctc_weight=0.0, max_tokens=10)
    base, _ = beam_search(model, tok, enc[0], int(n[0]), prefix, None, plain)
    zero = DecodingOptions(beam_size=2, ctc_weight=0.0, max_tokens=10, hotwords=("friend",), hotword_bonus=0.0)
    assert beam_search(model, tok, enc[0], int(n[0]), prefix, None, zero)[0] == base
    hot = DecodingOptions(beam_size=2, ctc_weight=0.0, max_tokens=10, hotwords=("friend",), hotword_bonus=50.0)
    assert "friend" in tok.decode(beam_search(model, tok, enc[0], int(n[0]), prefix, None, hot)[0])


def test_language_detection_two_steps(model, tok):
    torch.manual_seed(5)
    with torch.no_grad():
        enc, n = model.encode(torch.randn(3, 150, 80), torch.tensor([150, 150, 100]))
    for lang, region, _ in detect_language(model, tok, enc, n):
        assert region in PAIRS[lang]  # step two only looks at the detected language's regions
    assert all(r in PAIRS["zh"] and lang == "zh" for lang, r, _ in detect_language(model, tok, enc, n, "zh"))
    assert all(r == "HK" for _, r, _ in detect_language(model, tok, enc, n, "yue", "HK"))
    with pytest.raises(ValueError, match="not a valid region"):
        detect_language(model, tok, enc, n, "ko", "JP")


def test_no_text_when_ctc_hears_nothing(tok):
    torch.manual_seed(6)
    m = Dolphin(preset("tiny", vocab_size=tok.vocab_size, dropout=0.0, **TINY)).eval()
    with torch.no_grad():
        m.ctc_head.bias.fill_(-50.0)
        m.ctc_head.bias[0] = 50.0  # CTC says blank everywhere
        enc, n = m.encode(torch.randn(2, 150, 80), torch.tensor([150, 150]))
        res = decode(m, tok, enc, n, DecodingOptions(beam_size=3))
    assert [r.text for r in res] == ["", ""] and all(r.tokens == [] for r in res)


# --- VAD -----------------------------------------------------------------------------------------------

def test_vad_silence_and_noise_give_no_segments():
    rng = np.random.default_rng(0)
    brown = np.cumsum(rng.standard_normal(3 * SR))
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")
    for x in (np.zeros(3 * SR, np.float32), 0.2 * rng.standard_normal(3 * SR), 0.1 * brown / brown.std(),
              np.zeros(10, np.float32)):
        assert speech_segments(x.astype(np.float32)) == []


def test_vad_finds_bursts_and_caps_segment_length():
    gap = np.zeros(SR, np.float32)
    x = np.concatenate([gap, voice_like(1.0), gap, voice_like(0.8, 200), gap])
    segs = speech_segments(x)
    assert len(segs) == 2
    assert abs(segs[0][0] - 1.0) < 0.15 and abs(segs[0][1] - 2.0) < 0.15
    assert abs(segs[1][0] - 3.0) < 0.15 and abs(segs[1][1] - 3.8) < 0.15
    words = [voice_like(0.6, 120 + 10 * i, seed=i) for i in range(40)]  # 40 words, 0.2 s pauses: 31.8 s
    long = np.concatenate([np.concatenate([w, np.zeros(SR // 5, np.float32)]) for w in words])
    pieces = speech_segments(long, opts=VadOptions(max_seconds=10.0))
    assert all(e - s <= 10.0 for s, e in pieces) and len(pieces) >= 4
    assert pieces[0][0] < 0.2 and pieces[-1][1] > len(long) / SR - 0.5
    assert speech_segments(long) and all(e - s <= 30.0 for s, e in speech_segments(long))


# --- transcription, formats, CLI ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def released(tmp_path_factory, model, tok):
    from duomind.apps.asr.train import release

    cmvn = A.GlobalCMVN(torch.zeros(80), torch.ones(80) * 4)
    return release(model, tok, cmvn, tmp_path_factory.mktemp("asr") / "model")


def test_release_replaces_the_model_whole_and_readable(tmp_path, model, tok):
    from duomind.apps.asr.train import release

    cmvn = A.GlobalCMVN(torch.zeros(80), torch.ones(80) * 4)
    first = release(model, tok, cmvn, tmp_path / "model")
    before = (first / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.ctc_head.bias.add_(1.0)
    try:
        again = release(model, tok, cmvn, tmp_path / "model")
    finally:
        with torch.no_grad():
            model.ctc_head.bias.sub_(1.0)
    assert again == first and (again / "model.safetensors").read_bytes() != before and (again / "COMPLETE").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old copy left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in again.iterdir())
    assert again.stat().st_mode & 0o777 == 0o755


def test_transcribe_silence_noise_and_short_audio_give_empty_segments(released):
    from duomind.apps.asr.transcribe import load_pipeline, transcribe

    pipe = load_pipeline(released)
    rng = np.random.default_rng(1)
    for x in (np.zeros(2 * SR, np.float32), (0.3 * rng.standard_normal(2 * SR)).astype(np.float32),
              np.zeros(0, np.float32), tone(300, 0.05)):
        result = transcribe(pipe, x)
        assert result.segments == [] and result.text == ""
    with pytest.raises(ValueError, match="NaN"):
        transcribe(pipe, np.full(SR, np.nan, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        transcribe(pipe, np.zeros((2, SR), np.float32))


def test_transcribe_speechlike_audio_returns_timed_segments(released):
    from duomind.apps.asr.transcribe import load_pipeline, transcribe

    pipe = load_pipeline(released)
    gap = np.zeros(SR // 2, np.float32)
    x = np.concatenate([gap, voice_like(1.0), gap, voice_like(1.0, 190), gap])
    with torch.no_grad():  # a random model: whatever it says, every segment is well formed
        pipe.model.ctc_head.bias[0] = -20.0  # make the CTC head speak
        result = transcribe(pipe, x, DecodingOptions(language="ja", beam_size=2, max_tokens=5, word_timestamps=True))
        pipe.model.ctc_head.bias[0] = 0.0
    assert result.rtf > 0 and result.duration == pytest.approx(len(x) / SR)
    assert 1 <= len(result.segments) <= 2
    for s in result.segments:
        assert s.language == "ja" and s.region == "JP" and 0 <= s.start < s.end <= result.duration and s.text
        assert all(s.start <= w["start"] <= w["end"] <= s.end + 1e-6 for w in s.words)


def test_render_formats():
    from duomind.apps.asr.transcribe import Segment, Transcript, render

    t = Transcript([Segment("你好", "zh", "CN", 0.5, 1.25), Segment("hello", "en", "US", 61.0, 62.5)], 0.05, 63.0)
    assert render(t, "txt") == "你好\nhello\n"
    data = json.loads(render(t, "json"))
    assert data == {"segments": [{"text": "你好", "language": "zh", "region": "CN", "start": 0.5, "end": 1.25},
                                 {"text": "hello", "language": "en", "region": "US", "start": 61.0, "end": 62.5}],
                    "rtf": 0.05}
    assert "2\n00:01:01,000 --> 00:01:02,500\nhello" in render(t, "srt")
    assert render(t, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.250\n你好")
    with pytest.raises(ValueError, match="unknown output format"):
        render(t, "doc")


def test_cli_transcribe_silence_json_and_bad_codes(released, tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    cmd = [sys.executable, "-m", "duomind.cli", "asr", "transcribe", str(tmp_path / "silence.wav"), "--model",
           str(released), "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["segments"] == [] and "rtf" in data and "no speech" in out.stderr
    bad = subprocess.run(cmd + ["--lang", "zh", "--region", "JP"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not a valid region" in bad.stderr and "Traceback" not in bad.stderr


def test_load_pipeline_refuses_partial_model(released, tmp_path):
    import shutil

    from duomind.apps.asr.transcribe import load_pipeline

    broken = tmp_path / "broken"
    shutil.copytree(released, broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_pipeline(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")


# --- export --------------------------------------------------------------------------------------------

def test_onnx_export_matches_torch(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from duomind.apps.asr.export import export_onnx

    result = export_onnx(model, tmp_path)
    assert set(result["max_abs_diff"]) == {"enc", "ctc_log_probs", "logits"}
    assert max(result["max_abs_diff"].values()) < 1e-4


# --- training ------------------------------------------------------------------------------------------

def _tone_corpus(root) -> str:
    """Utterances whose 'words' are tones: each word a frequency, so text is recoverable from audio."""
    words = {"do": 262, "re": 294, "mi": 330, "fa": 349}
    rng = np.random.default_rng(0)
    rows = []
    (root / "wav").mkdir()
    for i in range(8):
        seq = [str(w) for w in rng.choice(list(words), size=2)]
        wav = np.concatenate([np.concatenate([tone(words[w], 0.25), np.zeros(800, np.float32)]) for w in seq])
        sf.write(root / "wav" / f"{i}.wav", wav, SR)
        rows.append({"audio": f"wav/{i}.wav", "text": " ".join(seq), "lang": "en", "region": "US"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "train.jsonl")


def test_training_resume_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    from duomind.apps.asr.train import AsrTrainConfig, train

    manifest = _tone_corpus(tmp_path)
    common = dict(train_manifest=manifest, model=TINY, text_vocab=20, max_steps=4, batch_size=4, warmup_steps=1,
                  progress=False, save_every=2)
    whole = train(AsrTrainConfig(out_dir=str(tmp_path / "a"), **common))
    first = train(AsrTrainConfig(out_dir=str(tmp_path / "b"), **common, time_limit_minutes=1e-9))  # stops at step 1
    assert first.name == "step-000001"
    split = train(AsrTrainConfig(out_dir=str(tmp_path / "b"), **common))
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_manifest_errors_name_the_line(tmp_path):
    from duomind.apps.asr.train import read_manifest

    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "x", "lang": "en", "region": "US"}\n'
                                      '{"audio": "b.wav", "text": "y", "lang": "zz", "region": "US"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: unknown language"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "n.jsonl").write_text('{"audio": "a.wav"}\n')
    with pytest.raises(ValueError, match="missing field"):
        read_manifest(tmp_path / "n.jsonl")
    with pytest.raises(FileNotFoundError, match="asr synth"):
        read_manifest(tmp_path / "none.jsonl")
