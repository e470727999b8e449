"""Dolphin (arXiv 2503.20212): multilingual speech recognition with two-level language tokens.

Whisper-style stage-per-file layout: `audio` (load, resample, log-mel, CMVN), `model` (E-Branchformer
encoder, Transformer decoder, CTC head), `tokenizer` (subwords + language, region, task and time tokens),
`decoding` (language/region detection, CTC fast path, joint CTC/attention beam search, hotwords, word
timestamps), `vad` + `transcribe` (long audio -> segments), `train`, `synth` (espeak-ng corpus), `export`
(ONNX), `metrics` (CER), `cli`. Needs the `[asr]` extra.
"""
