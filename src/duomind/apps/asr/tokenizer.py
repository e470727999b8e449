"""Dolphin's token layout (arXiv 2503.20212): subwords plus task, two-level language and time tokens.

Ids are fixed by position so every model agrees on them::

    0 <blank>  (CTC blank; also padding)      1 <unk>   2 <sos>   3 <eos>   4 <asr>   5 <notimestamp>
    then one token per language (<zh>, <ja>, ...), one per region (<CN>, <JP>, ...),
    time tokens <0.00> .. <30.00> in 0.02 s steps, then the subword pieces (unigram, metaspace).

The decoder prefix is `<sos> <lang> <region> <asr> <notimestamp>`; a language token is only ever followed
by a region the language is spoken in (`PAIRS`), which is what restricts region detection and rejects
unknown pairs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BLANK, UNK, SOS, EOS, ASR, NOTIMESTAMP = "<blank>", "<unk>", "<sos>", "<eos>", "<asr>", "<notimestamp>"
BASE_SPECIALS = [BLANK, UNK, SOS, EOS, ASR, NOTIMESTAMP]

# language code -> regions it is spoken in (ISO 639 / ISO 3166 codes, as Dolphin writes `<zh><CN>`)
PAIRS: dict[str, tuple[str, ...]] = {
    "zh": ("CN", "TW", "SG", "HK"), "yue": ("HK", "CN"), "ja": ("JP",), "ko": ("KR",), "vi": ("VN",),
    "hi": ("IN",), "ar": ("SA", "EG", "AE"), "th": ("TH",), "id": ("ID",), "ms": ("MY",), "ta": ("IN", "LK"),
    "bn": ("BD", "IN"), "ur": ("PK", "IN"), "fa": ("IR",), "tr": ("TR",), "en": ("US", "GB", "IN", "SG"),
}
LANGUAGES = list(PAIRS)
REGIONS = sorted({r for rs in PAIRS.values() for r in rs})
TIME_STEP, MAX_TIME = 0.02, 30.0
TIMES = [f"<{i * TIME_STEP:.2f}>" for i in range(round(MAX_TIME / TIME_STEP) + 1)]
SPECIALS = BASE_SPECIALS + [f"<{lang}>" for lang in LANGUAGES] + [f"<{r}>" for r in REGIONS] + TIMES


def check_pair(language: str | None, region: str | None) -> None:
    """Raise ValueError naming the valid choices for an unknown language, region or pair."""
    if language is not None and language not in PAIRS:
        raise ValueError(f"unknown language code {language!r}; known: {', '.join(LANGUAGES)}.")
    if region is not None:
        if region not in REGIONS:
            raise ValueError(f"unknown region code {region!r}; known: {', '.join(REGIONS)}.")
        if language is not None and region not in PAIRS[language]:
            raise ValueError(f"region {region!r} is not a valid region for language {language!r}; "
                             f"valid: {', '.join(PAIRS[language])}.")
    if region is not None and language is None:
        raise ValueError("a region was given without a language; pass --lang as well (e.g. --lang zh --region CN).")


class AsrTokenizer:
    """A unigram subword model (HF `tokenizers`) with Dolphin's special-token layout in front of it."""

    def __init__(self, tok) -> None:
        self.tok = tok
        vocab = tok.get_vocab()
        for i, name in enumerate(SPECIALS):
            if vocab.get(name) != i:
                raise ValueError(f"tokenizer has {name!r} at id {vocab.get(name)}, expected {i}; it was not made by "
                                 "duomind.apps.asr.tokenizer.train_tokenizer.")
        self.vocab_size = tok.get_vocab_size()
        self.sos, self.eos, self.asr, self.notimestamp = (SPECIALS.index(s) for s in (SOS, EOS, ASR, NOTIMESTAMP))
        self.blank, self.unk = 0, 1
        self.lang_ids = {lang: SPECIALS.index(f"<{lang}>") for lang in LANGUAGES}
        self.region_ids = {r: SPECIALS.index(f"<{r}>") for r in REGIONS}
        self.time_begin = SPECIALS.index(TIMES[0])
        self.text_begin = len(SPECIALS)  # subword pieces start here

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) >= self.text_begin]
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def piece(self, i: int) -> str:
        return self.tok.id_to_token(int(i))

    def prefix(self, language: str, region: str, timestamps: bool = False) -> list[int]:
        """The decoder prompt `<sos> <lang> <region> <asr> [<notimestamp>]` for a checked pair."""
        check_pair(language, region)
        ids = [self.sos, self.lang_ids[language], self.region_ids[region], self.asr]
        return ids if timestamps else ids + [self.notimestamp]

    def time_token(self, seconds: float) -> int:
        return self.time_begin + min(max(round(seconds / TIME_STEP), 0), len(TIMES) - 1)

    def save(self, directory: str | Path) -> None:
        self.tok.save(str(Path(directory) / "tokenizer.json"))

    @classmethod
    def load(cls, directory: str | Path) -> AsrTokenizer:
        from tokenizers import Tokenizer

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {str(directory)!r}; train one with the ASR recipe.")
        return cls(Tokenizer.from_file(str(path)))


def train_tokenizer(texts: Iterable[str], text_vocab: int = 400) -> AsrTokenizer:
    """Train a unigram model on transcripts; the special tokens take the first ids in `SPECIALS` order.

    Args:
        texts: Transcripts (any scripts).
        text_vocab: Subword pieces wanted on top of the special tokens (the trainer may keep fewer when the
            corpus is small).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=len(SPECIALS) + text_vocab, special_tokens=SPECIALS,
                                      unk_token=UNK, max_piece_length=8, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    # the trainer lists equal-score pieces in hash order; sort them so a corpus always gives the same ids
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = vocab[: len(SPECIALS)] + sorted(vocab[len(SPECIALS):], key=lambda p: (-round(p[1], 9), p[0]))
    spec["model"]["unk_id"] = SPECIALS.index(UNK)
    return AsrTokenizer(Tokenizer.from_str(json.dumps(spec)))

