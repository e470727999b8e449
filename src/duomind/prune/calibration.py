"""Calibration data for pruning: token windows from a text/JSONL file or from the synthetic task corpus."""

from __future__ import annotations

from pathlib import Path

import torch

from duomind.train.data import DataError, build_examples, read_records


def default_corpus(n: int = 200, seed: int = 1234) -> list[dict]:
    """Documents of the synthetic task corpus (the bench-base model's pre-training format), made fresh."""
    from duomind.tasks import generate
    from duomind.tasks.formats import corpus_text

    text = corpus_text(generate(None, n=n, seed=seed), seed=seed)
    return [{"text": d} for d in text.split("\n\n") if d.strip()]


def calibration_batches(tokenizer, path: str | Path | None = None, samples: int = 32, seq_len: int = 256
                        ) -> torch.Tensor:
    """(samples, seq_len) token windows packed from `path` (.txt: blank-line separated documents; .jsonl:
    {"text"} or chat {"messages"} records) or, with no path, from a fresh synthetic task corpus.

    Raises:
        FileNotFoundError / ValueError: the file is missing, empty, malformed or shorter than one window.
    """
    if samples <= 0 or seq_len <= 1:
        raise ValueError(f"calibration needs samples >= 1 and seq_len >= 2; got samples={samples}, seq_len={seq_len}.")
    if path is None:
        records = default_corpus(n=max(50, samples * seq_len // 60))
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {str(path)!r} does not exist; pass a .txt or .jsonl file, or "
                                    "leave --calibration unset to use the synthetic task corpus.")
        try:
            records = read_records(path)
        except DataError as err:
            raise ValueError(f"calibration file: {err}") from err
    try:
        windows = build_examples(tokenizer, records, "pretrain", seq_len).inputs
    except DataError as err:
        where = f"calibration file {str(path)!r}" if path else "the calibration corpus"
        raise ValueError(f"{where} is too short: {err} Importance needs at least one full window; add text or lower "
                         "--calibration_seq_len.") from err
    return torch.tensor(windows[:samples], dtype=torch.long)
