"""ONNX export of the ASR model, checked against onnxruntime.

Two graphs, so that any runtime can do CTC-only or joint decoding around them:

* `encoder.onnx`: normalised features (B, T, 80) + lengths (B,) -> encoder states (B, T', d), their lengths,
  and CTC log-probabilities (B, T', V).
* `decoder.onnx`: token prefixes (B, L) + encoder states + lengths -> decoder logits (B, L, V).

Batch, frame and token axes are dynamic. Tokenizer and CMVN statistics are copied beside the graphs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from duomind.apps.asr.model import Dolphin


class _Encoder(nn.Module):
    def __init__(self, model: Dolphin) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats, lengths):
        enc, enc_len = self.model.encode(feats, lengths)
        return enc, enc_len, self.model.ctc_log_probs(enc)


class _Decoder(nn.Module):
    def __init__(self, model: Dolphin) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, enc, enc_len):
        return self.model.decode(tokens, enc, enc_len)


def export_onnx(model: Dolphin, out: str | Path, source: str | Path | None = None, opset: int = 17,
                check: bool = True) -> dict:
    """Write encoder.onnx and decoder.onnx to `out`; with `check`, compare onnxruntime with torch.

    Returns {"encoder": path, "decoder": path, "max_abs_diff": {...}} (the differences when checked).
    """
    import warnings

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    feats, lengths = torch.randn(2, 160, model.config.n_mels), torch.tensor([160, 120])
    with torch.no_grad():
        enc, enc_len, _ = _Encoder(model)(feats, lengths)
    tokens = torch.randint(0, model.config.vocab_size, (2, 6))
    paths = {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Encoder(model), (feats, lengths), str(paths["encoder"]), opset_version=opset,
                          input_names=["feats", "lengths"], output_names=["enc", "enc_len", "ctc_log_probs"],
                          dynamic_axes={"feats": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                                        "enc": {0: "batch", 1: "enc_frames"}, "enc_len": {0: "batch"},
                                        "ctc_log_probs": {0: "batch", 1: "enc_frames"}}, dynamo=False)
        torch.onnx.export(_Decoder(model), (tokens, enc, enc_len), str(paths["decoder"]), opset_version=opset,
                          input_names=["tokens", "enc", "enc_len"], output_names=["logits"],
                          dynamic_axes={"tokens": {0: "batch", 1: "length"}, "enc": {0: "batch", 1: "enc_frames"},
                                        "enc_len": {0: "batch"}, "logits": {0: "batch", 1: "length"}}, dynamo=False)
    if source is not None:
        for name in ("tokenizer.json", "cmvn.safetensors", "config.json"):
            if (Path(source) / name).is_file():
                shutil.copy(Path(source) / name, out / name)
    result = {k: str(v) for k, v in paths.items()}
    if check:
        result["max_abs_diff"] = parity(model, out)
    return result


def parity(model: Dolphin, directory: str | Path, frames: int = 230, seed: int = 0) -> dict:
    """Largest |onnxruntime - torch| over encoder states, CTC log-probs and decoder logits, on fresh shapes."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, frames, model.config.n_mels, generator=g)
    lengths = torch.tensor([frames, frames - 50, frames - 97])
    tokens = torch.randint(0, model.config.vocab_size, (3, 9), generator=g)
    with torch.no_grad():
        enc, enc_len, ctc = _Encoder(model.eval())(feats, lengths)
        logits = model.decode(tokens, enc, enc_len)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    e = ort.InferenceSession(str(Path(directory) / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    d = ort.InferenceSession(str(Path(directory) / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    o_enc, o_len, o_ctc = e.run(None, {"feats": feats.numpy(), "lengths": lengths.numpy()})
    (o_logits,) = d.run(None, {"tokens": tokens.numpy(), "enc": o_enc, "enc_len": o_len})
    if not np.array_equal(o_len, enc_len.numpy()):
        raise RuntimeError(f"ONNX encoder lengths {o_len} differ from torch {enc_len.tolist()}.")
    diffs = {}
    for name, a, b in (("enc", o_enc, enc), ("ctc_log_probs", o_ctc, ctc), ("logits", o_logits, logits)):
        delta = np.abs(a - b.numpy())
        if name != "logits":  # padded frames are arbitrary in both; compare the valid ones
            delta = np.concatenate([delta[i, : int(enc_len[i])].ravel() for i in range(len(delta))])
        diffs[name] = float(delta.max())
    return diffs
