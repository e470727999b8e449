"""Incremental detokenisation: token ids in, clean text deltas out (reasoning and answer kept apart).

Byte-level BPE can split one character over tokens, so a segment is decoded whole each time and only a
stable prefix is released: a trailing replacement character (a half-decoded character) and trailing
whitespace wait for what follows. Leading whitespace of a segment is dropped, trailing whitespace at the
end too, so the streamed pieces join into exactly the non-streamed text.
"""

from __future__ import annotations


class Segment:
    """One growing piece of text (the thinking span or the answer) decoded from its tokens."""

    def __init__(self, tok, strip: bool = True) -> None:
        self.tok, self.strip = tok, strip
        self.ids: list[int] = []
        self.sent = ""

    def text(self) -> str:
        text = self.tok.decode(self.ids, skip_special_tokens=False)
        return text.strip() if self.strip else text

    def push(self, token: int) -> str:
        """Add a token; return the newly stable text."""
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=False).rstrip("\ufffd")
        if self.strip:
            text = text.strip()
        if not text.startswith(self.sent):  # a merged character rewrote the tail: wait until it settles
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def flush(self) -> str:
        """The rest of the text at the end of the segment."""
        text = self.text()
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text
        return delta


def cut_at_stop(text: str, stops: list[str]) -> int | None:
    """Index where the first stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the tail of `text` that could be the start of a stop string (not sent yet)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best
