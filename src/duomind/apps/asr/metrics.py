"""Error rates for multilingual ASR: character error rate per language after light normalisation."""

from __future__ import annotations

import re
import unicodedata

NO_SPACES = {"zh", "yue", "ja", "th"}  # scripts written without spaces between words
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str, lang: str | None = None) -> str:
    """NFKC, lower case, punctuation removed, whitespace collapsed (dropped for scripts without spaces)."""
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return "".join(text.split()) if lang in NO_SPACES else " ".join(text.split())


def cer(reference: str, hypothesis: str, lang: str | None = None) -> float:
    """Character error rate (edits / reference characters, jiwer); an empty reference scores 0 or 1."""
    import jiwer

    ref, hyp = normalize(reference, lang), normalize(hypothesis, lang)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp))
