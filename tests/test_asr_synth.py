"""ASR corpus synthesis (espeak-ng) and the shipped default model (assets/asr)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("soundfile")
import soundfile as sf  # noqa: E402

from duomind.apps.asr.transcribe import DEFAULT_MODEL  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng; `make setup` does it)")
needs_model = pytest.mark.skipif(not (DEFAULT_MODEL / "COMPLETE").is_file(),
                                 reason="the default ASR model (assets/asr) has not been trained")


@needs_espeak
def test_synth_corpus_holds_out_speakers(tmp_path):
    from duomind.apps.asr.synth import LEXICON, NO_SPACES, synthesize
    from duomind.apps.asr.train import read_manifest

    paths = synthesize(tmp_path, ["en", "zh", "ja"], per_lang=4, test_per_lang=2, seed=1, progress=False)
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])
    assert len(train) == 12 and len(test) == 6
    assert {r["speaker"].split("+")[1] for r in train}.isdisjoint({r["speaker"].split("+")[1] for r in test})
    assert {(r["lang"], r["region"]) for r in train} == {("en", "US"), ("en", "GB"), ("zh", "CN"), ("ja", "JP")}
    for r in train + test:
        info = sf.info(r["audio"])
        assert info.samplerate == 16000 and info.channels == 1 and 0.5 < info.duration < 10
        lexicon = " ".join(LEXICON[r["lang"]])
        units = list(r["text"]) if r["lang"] in NO_SPACES else r["text"].split()
        assert all(u in lexicon for u in units)  # transcripts come from the lexicon
    again = synthesize(tmp_path / "again", ["en", "zh", "ja"], per_lang=4, test_per_lang=2, seed=1, progress=False)
    assert again["train"].read_text() == paths["train"].read_text()  # reproducible transcripts and speakers


def test_synth_rejects_unknown_language(tmp_path):
    from duomind.apps.asr.synth import synthesize

    with pytest.raises(ValueError, match="no synthetic voice"):
        synthesize(tmp_path, ["xx"], per_lang=1, test_per_lang=1, progress=False)


@needs_model
def test_shipped_model_is_silent_on_silence_and_noise():
    from duomind.apps.asr.transcribe import load_pipeline, transcribe

    pipe = load_pipeline()
    assert pipe.model.num_parameters() * 4 < 30e6  # fits the 30 MB asset budget
    rng = np.random.default_rng(0)
    for x in (np.zeros(3 * 16000, np.float32), (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32),
              (0.5 * rng.standard_normal(16000)).astype(np.float32)):
        assert transcribe(pipe, x).segments == []


@needs_model
@needs_espeak
def test_shipped_model_transcribes_an_unseen_voice(tmp_path):
    from duomind.apps.asr.metrics import cer
    from duomind.apps.asr.synth import speak

    # a held-out test voice; the text uses the training lexicon
    wav = np.concatenate([np.zeros(4000, np.float32), 0.6 * speak("你好 朋友 学习", "cmn", "f4", 170, 60),
                          np.zeros(4000, np.float32)])
    sf.write(tmp_path / "zh.wav", wav, 16000)
    cmd = [sys.executable, "-m", "duomind.cli", "asr", "transcribe", str(tmp_path / "zh.wav"), "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    segs = json.loads(out.stdout)["segments"]
    assert len(segs) == 1 and segs[0]["language"] == "zh" and segs[0]["region"] == "CN"
    assert cer("你好朋友学习", segs[0]["text"], "zh") <= 0.5
