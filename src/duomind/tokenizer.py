"""Tokenizers: byte-level BPE trained with Hugging Face `tokenizers`, a ChatML chat template, reasoning tokens.

Special tokens:
    <|endoftext|>   end of text; also padding
    <|im_start|> <|im_end|>   chat turn delimiters (ChatML)
    <think> </think>          the slow-mode reasoning span
    <|fast|> <|slow|> <|auto|>   mode markers placed after the assistant header by the chat template

Digits are split one per token: small models learn column arithmetic far more easily that way.
Any local Hugging Face tokenizer directory loads through `load_tokenizer` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

EOS = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
MODES = ("fast", "slow", "auto")
MODE_TOKENS = {m: f"<|{m}|>" for m in MODES}
SPECIAL_TOKENS = [EOS, IM_START, IM_END, THINK, END_THINK, *MODE_TOKENS.values()]

# ChatML; `mode` (fast | slow | auto) appends its marker to the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if mode is defined and mode %}<|{{ mode }}|>{% endif %}"
    "{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast` with the chat template.

    Args:
        texts: Training text (an iterator of documents or lines).
        vocab_size: Final vocabulary size including the 256 byte symbols and the special tokens.
        min_frequency: Minimum pair count for a merge.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {floor} "
                         "(256 bytes + special tokens).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    seen = [0]

    def counted(it: Iterable[str]) -> Iterator[str]:
        for text in it:
            seen[0] += 1
            yield text

    tok.train_from_iterator(counted(texts), trainer=trainer)
    if seen[0] == 0:
        raise ValueError("no training text: the corpus is empty. Make one with `duomind data make`.")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)


def load_tokenizer(path: str | Path):
    """Load a tokenizer from a local directory (DuoMind's or any Hugging Face one, or a training run's directory:
    its latest checkpoint's, as load_model reads it); never downloads."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and (path / "latest").is_file():
        from duomind.train.checkpoint import resolve_checkpoint

        path = resolve_checkpoint(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"no tokenizer in {str(path)!r} (expected tokenizer.json); train one with "
                                "`duomind tokenizer train CORPUS.txt --out DIR`.")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def special_ids(tok) -> dict[str, int | None]:
    """Ids of the reasoning and chat tokens (None where the tokenizer lacks one)."""
    vocab = tok.get_vocab()
    return {t: vocab.get(t) for t in SPECIAL_TOKENS}


def chat_prompt(tok, messages: list[dict[str, str]], mode: str | None = None) -> list[int]:
    """Token ids of a chat ending in the assistant header (plus the mode marker when given)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(MODES)}.")
    kwargs = {"mode": mode} if mode else {}
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def train_cli(corpus: str | list[str], out: str = "tokenizer", vocab_size: int = 512, min_frequency: int = 2) -> None:
    """Train a byte-level BPE tokenizer with the DuoMind chat template and reasoning tokens.

    Args:
        corpus: Text file(s) to train on, read line by line (e.g. corpus.txt from `duomind data make`).
        out: Output directory (tokenizer.json, tokenizer_config.json).
        vocab_size: Vocabulary size including bytes and special tokens.
        min_frequency: Minimum pair frequency for a merge.
    """
    paths = [Path(p) for p in ([corpus] if isinstance(corpus, str) else corpus)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"corpus file(s) not found: {missing}. Make data with `duomind data make`.")

    def lines() -> Iterator[str]:
        for p in paths:
            with p.open(encoding="utf-8") as fh:
                yield from (line for line in fh if line.strip())

    tok = train_tokenizer(lines(), vocab_size=vocab_size, min_frequency=min_frequency)
    tok.save_pretrained(out)
    print(f"tokenizer with {len(tok)} tokens written to {out}")
