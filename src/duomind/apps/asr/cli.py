"""`duomind asr ...` verbs: synth, train (in train.py), transcribe, export. Thin calls into the library."""

from __future__ import annotations

import sys
from pathlib import Path


def synth_cli(out: str, langs: list[str] | None = None, per_lang: int = 300, test_per_lang: int = 40,
              min_words: int = 2, max_words: int = 4, seed: int = 0) -> None:
    """Write a multilingual synthetic speech corpus (espeak-ng) with held-out test speakers.

    Args:
        out: Output directory (audio/, train.jsonl, test.jsonl).
        langs: Language codes (default: en zh yue ja ko vi hi ar).
        per_lang: Training utterances per language.
        test_per_lang: Test utterances per language, spoken by voices never used in training.
        min_words: Fewest words per utterance.
        max_words: Most words per utterance.
        seed: Random seed.
    """
    from duomind.apps.asr.synth import synthesize

    paths = synthesize(out, langs, per_lang, test_per_lang, (min_words, max_words), seed)
    print(f"wrote {paths['train']} and {paths['test']}")


def transcribe_cli(audio: str, model: str | None = None, lang: str | None = None, region: str | None = None,
                   format: str = "txt", output: str | None = None, ctc_only: bool = False, beam_size: int = 5,
                   ctc_weight: float = 0.3, length_bonus: float = 0.5, hotwords: list[str] | None = None,
                   word_timestamps: bool = False, batch_size: int = 8) -> None:
    """Transcribe an audio file into segments with language and region.

    Args:
        audio: wav/flac/ogg (other formats need ffmpeg).
        model: Model directory (default: the shipped assets/asr, or $DUOMIND_ASR_MODEL).
        lang: Language code; given, detection is skipped (e.g. zh).
        region: Region code for `lang` (e.g. CN); detected when omitted.
        format: txt | json | srt | vtt.
        output: Write here instead of standard output.
        ctc_only: Decode with the CTC head alone (fastest).
        beam_size: Beam width of joint CTC/attention search (1: greedy).
        ctc_weight: Weight of the CTC prefix score in the search.
        length_bonus: Score added per token.
        hotwords: Words to favour.
        word_timestamps: Add word start/end times (CTC forced alignment) to json output.
        batch_size: Speech segments encoded together.
    """
    from duomind.apps.asr.decoding import DecodingOptions
    from duomind.apps.asr.transcribe import FORMATS, load_pipeline, render, transcribe

    if format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}.")
    opts = DecodingOptions(language=lang, region=region, ctc_only=ctc_only, beam_size=beam_size,
                           ctc_weight=ctc_weight, length_bonus=length_bonus, hotwords=tuple(hotwords or ()),
                           word_timestamps=word_timestamps)
    result = transcribe(load_pipeline(model), audio, opts, batch_size=batch_size)
    text = render(result, format)
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if not result.segments:
        print("(no speech found)", file=sys.stderr)


def export_cli(out: str = "asr-onnx", model: str | None = None, onnx: bool = True) -> None:
    """Export the ASR model to ONNX (encoder+CTC and decoder graphs) and check it against onnxruntime.

    Args:
        out: Output directory.
        model: Model directory (default: the shipped assets/asr).
        onnx: Export ONNX (the only format so far).
    """
    from duomind.apps.asr.export import export_onnx
    from duomind.apps.asr.transcribe import load_pipeline

    if not onnx:
        raise ValueError("ONNX is the only export format; pass --onnx true.")
    pipe = load_pipeline(model)
    result = export_onnx(pipe.model, out, source=pipe.path)
    print(f"wrote {result['encoder']} and {result['decoder']}; onnxruntime vs torch max |diff|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in result["max_abs_diff"].items()))
