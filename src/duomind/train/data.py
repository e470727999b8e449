"""Training data: token windows for pre-training, prompt-masked chats for SFT/KD, deterministic order.

The batch of any step is a pure function of (seed, step), so resuming needs only the step count and a
2-process run sees exactly the sequences of the 1-process run.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from duomind.config import PACKINGS
from duomind.tokenizer import chat_prompt

IGNORE = -100


class DataError(ValueError):
    """Training data is missing, empty or malformed; the message names the file and the fix."""


def read_records(path: str | Path) -> list[dict]:
    """Read a .jsonl file with file:line errors, or a .txt file as {"text"} documents separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; make synthetic data with `duomind data make`.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"data file {str(path)!r} is empty; point `data` at a file with training text.")
    if path.suffix != ".jsonl":
        docs = [d.strip("\n") for d in text.split("\n\n")]
        return [{"text": d} for d in docs if d.strip()]
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg}); each line must be one JSON object.") from err
        if not isinstance(rec, dict) or not ({"text", "messages"} & rec.keys()):
            raise DataError(f"{path}:{n}: a record needs a 'text' or a 'messages' field.")
        records.append(rec)
    return records


def chat_example(tok, rec: dict, train_all: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat record; labels cover only the final assistant turn (+ <|im_end|>)."""
    msgs = rec["messages"]
    if not msgs or msgs[-1].get("role") != "assistant":
        raise DataError(f"chat record {rec.get('id', '?')!r} must end with an assistant message.")
    prompt = chat_prompt(tok, msgs[:-1], mode=rec.get("mode"))
    target = tok.encode(msgs[-1]["content"] + "<|im_end|>", add_special_tokens=False)
    labels = (prompt if train_all else [IGNORE] * len(prompt)) + target
    return prompt + target, labels


@dataclass
class Examples:
    """Tokenised examples: lists of (input_ids, labels) of at most seq_len tokens each."""

    inputs: list[list[int]]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.inputs)


def best_fit_windows(docs: list[list[int]], seq_len: int) -> list[list[int]]:
    """Best-fit decreasing packing (Ding et al., "Fewer Truncations Improve Language Modeling", arXiv 2404.10830).

    Every document lands whole in one window (only those longer than seq_len are cut, into seq_len pieces),
    so no window starts in the middle of a document whose beginning the model cannot see. Longest first,
    each into the fullest window it still fits; windows are left short rather than split a document.
    """
    pieces = [d[i:i + seq_len] for d in docs for i in range(0, len(d), seq_len)]
    windows: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(seq_len + 1)]  # free room -> indices of windows with that room
    for piece in sorted(pieces, key=len, reverse=True):
        room = next((r for r in range(len(piece), seq_len + 1) if by_room[r]), None)
        if room is None:
            windows.append([])
            w = len(windows) - 1
        else:
            w = by_room[room].pop()
        windows[w].extend(piece)
        by_room[seq_len - len(windows[w])].append(w)
    return windows


def build_examples(tok, records: list[dict], mode: str, seq_len: int, packing: str = "concat") -> Examples:
    """Turn records into examples. Pre-training packs all text into seq_len windows; SFT/KD keep one chat each.
    KD on plain text (no chat records) packs windows like pre-training, with the KL on every token.

    `packing`: "concat" cuts the stream of documents into full windows (every token used; documents that cross a
    window edge are split), "best_fit" places whole documents (`best_fit_windows`; windows right-padded).
    """
    if packing not in PACKINGS:
        raise DataError(f"packing={packing!r} is not one of {', '.join(PACKINGS)}.")
    if mode == "pretrain" or (mode == "kd" and not any("messages" in r for r in records)):
        eos = tok.eos_token_id
        texts = [r["text"] if "text" in r else tok.apply_chat_template(r["messages"], tokenize=False) for r in records]
        docs = [ids + [eos] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        if packing == "best_fit":
            windows = best_fit_windows(docs, seq_len)
        else:
            stream = [t for d in docs for t in d]
            windows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
        if not windows:
            raise DataError(f"the data holds {sum(map(len, docs))} tokens, fewer than one window of "
                            f"seq_len={seq_len}; add data or lower seq_len.")
        return Examples(windows, windows)
    inputs, labels, cut, longest = [], [], 0, 0
    for rec in records:
        if "messages" not in rec:
            raise DataError(f"mode={mode!r} needs chat records with 'messages'; got a 'text' record. "
                            "Use sft.jsonl from `duomind data make`, or mode=pretrain for plain text.")
        ids, lab = chat_example(tok, rec)
        cut += len(ids) > seq_len
        longest = max(longest, len(ids))
        inputs.append(ids[:seq_len])
        labels.append(lab[:seq_len])
    if cut:  # a cut chat loses its ending (the answer, the end-of-turn token): the model learns not to finish
        warnings.warn(f"{cut} of {len(records)} chats are longer than seq_len={seq_len} tokens and were cut "
                      f"(the longest has {longest}); raise seq_len to keep their endings.", stacklevel=2)
    return Examples(inputs, labels)


class BatchOrder:
    """Deterministic sampling: example indices of step s are a function of (seed, s) only."""

    def __init__(self, n: int, global_batch: int, seed: int) -> None:
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if len(self._perms) >= 2:  # a batch straddles at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.global_batch
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.global_batch)]


def collate(ex: Examples, idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a micro-batch to its longest member: (input_ids, labels), both (B, T)."""
    width = max(len(ex.inputs[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(ex.inputs[i])
        ids[row, :n] = torch.tensor(ex.inputs[i])
        labels[row, :n] = torch.tensor(ex.labels[i])
    return ids, labels
