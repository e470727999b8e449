"""Decoding: language/region detection, CTC fast path, greedy and joint CTC/attention beam search.

Following Dolphin (arXiv 2503.20212) and hybrid CTC/attention decoding (Watanabe et al. 2017,
arXiv 1706.02737 is the ESPnet paper; the prefix score is from Graves 2012, section 7):

1. Language then region: argmax over the language tokens after `<sos>` (skipped when the language is
   given), then argmax over the regions valid for that language after `<sos><lang>`; unknown pairs are
   rejected before any work is done.
2. Text: either the CTC head alone (argmax, collapse repeats, drop blanks: the fast path users ask for),
   or beam search over the decoder whose hypotheses are scored
   `(1 - w) log p_att + w log p_ctc(prefix) + length_bonus * |y| + hotword bonus`, with the CTC prefix
   probability computed exactly by the forward recursion over frames.
3. Word timestamps (not in Dolphin): a Viterbi forced alignment of the chosen tokens against the CTC
   posteriors gives each token's frames; tokens are grouped into words.

Decoding never invents text where the CTC head hears none: when the CTC best path is empty, the result is
empty whatever the decoder would say (the guard against hallucination on silence and noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from duomind.apps.asr.metrics import NO_SPACES
from duomind.apps.asr.tokenizer import PAIRS, AsrTokenizer, check_pair

FRAME_SECONDS = 0.04  # encoder frame: 10 ms hop x 4 subsampling
NEG = -1e30


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode.

    Attributes:
        language / region: Known codes skip detection (a region needs its language); None detects.
        ctc_only: CTC greedy decoding only (fastest; no decoder passes for the text).
        beam_size: Beam width of the decoder search; 1 is greedy.
        ctc_weight: Weight of the CTC prefix score in beam search (0: attention only).
        length_bonus: Added per emitted token, against the search's bias to short outputs.
        max_tokens: Hard cap on text tokens (also capped by the encoder frames).
        hotwords: Words to favour (hotword biasing, beam search and greedy).
        hotword_bonus: Log-score added for each token that continues a hotword.
        word_timestamps: Align tokens to frames with the CTC head and return word times.
        silence_guard: Return no text when the CTC best path is empty (see the module doc); turn off only
            to time the search itself.
    """

    language: str | None = None
    region: str | None = None
    ctc_only: bool = False
    beam_size: int = 5
    ctc_weight: float = 0.3
    length_bonus: float = 0.5
    max_tokens: int = 224
    hotwords: tuple[str, ...] = ()
    hotword_bonus: float = 3.0
    word_timestamps: bool = False
    silence_guard: bool = True

    def __post_init__(self) -> None:
        check_pair(self.language, self.region)
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}.")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}.")


@dataclass
class DecodingResult:
    text: str
    tokens: list[int]
    language: str
    region: str
    language_prob: float
    score: float = 0.0
    words: list[dict] = field(default_factory=list)  # {"word", "start", "end"} seconds from the segment start


@torch.no_grad()
def detect_language(model, tok: AsrTokenizer, enc: torch.Tensor, enc_len: torch.Tensor, language: str | None = None,
                    region: str | None = None) -> list[tuple[str, str, float]]:
    """Two-step detection per item: (language, region, probability of the language). See module doc."""
    check_pair(language, region)
    b = enc.shape[0]
    if language is None:
        names = list(tok.lang_ids)
        ids = torch.tensor([tok.lang_ids[n] for n in names])
        sos = torch.full((b, 1), tok.sos, dtype=torch.long)
        probs = model.decode(sos, enc, enc_len, last_only=True)[:, 0, ids].float().softmax(-1)
        conf, best = probs.max(-1)
        langs, confs = [names[int(i)] for i in best], conf.tolist()
    else:
        langs, confs = [language] * b, [1.0] * b
    if region is not None:
        return [(lang, region, c) for lang, c in zip(langs, confs)]
    prefix = torch.tensor([[tok.sos, tok.lang_ids[lang]] for lang in langs])
    logits = model.decode(prefix, enc, enc_len, last_only=True)[:, 0].float()
    out = []
    for i, lang in enumerate(langs):
        allowed = PAIRS[lang]
        j = int(logits[i, [tok.region_ids[r] for r in allowed]].argmax())
        out.append((lang, allowed[j], confs[i]))
    return out


def ctc_greedy(log_probs: torch.Tensor) -> list[int]:
    """Best path of (T, V) CTC posteriors: argmax per frame, repeats collapsed, blanks (id 0) dropped."""
    path = log_probs.argmax(-1)
    keep = torch.ones_like(path, dtype=torch.bool)
    keep[1:] = path[1:] != path[:-1]
    return [int(t) for t in path[keep] if int(t) != 0]


class CTCPrefixScorer:
    """Exact log-probability that a prefix starts the CTC labelling of one utterance (Graves 2012, s. 7).

    A state is r (T, 2): log-probabilities that the prefix has been emitted by frame t, ending in a
    non-blank (col 0) or a blank (col 1). `extend` scores many candidate tokens at once and returns their
    prefix log-probabilities psi; the probability of the complete labelling is `final(r)`.

    The forward recursion over frames, r_n[t] = (r_n[t-1] + phi[t-1]) x_c[t] and
    r_b[t] = (r_n[t-1] + r_b[t-1]) x_blank[t], is a first-order linear recurrence, so it is solved for all
    frames at once: dividing by the cumulative emission product turns it into a cumulative sum, which in
    log space is `logcumsumexp` (float64 keeps the long cumulative sums exact enough).
    """

    def __init__(self, log_probs: torch.Tensor, blank: int = 0) -> None:
        self.x = log_probs.double()  # (T, V)
        self.blank = blank
        self.cum_blank = torch.cumsum(self.x[:, blank], 0)  # (T,)

    def initial(self) -> torch.Tensor:
        r = torch.full((self.x.shape[0], 2), NEG, dtype=torch.float64)
        r[:, 1] = self.cum_blank
        return r

    def extend(self, r: torch.Tensor, last: int | None, cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New states (T, 2, C) and prefix log-probs (C,) for prefix + each candidate token."""
        x = self.x[:, cands]  # (T, C)
        phi = torch.logaddexp(r[:, 0], r[:, 1])[:, None].expand_as(x).clone()  # paths that may precede c
        if last is not None:  # a repeated label needs a blank in between
            phi[:, cands == last] = r[:, 1:2]
        first = x[0] if last is None else torch.full_like(x[0], NEG)
        cum = torch.cumsum(x, 0)
        n = torch.logcumsumexp(torch.cat([(first - cum[0])[None], phi[:-1] - cum[:-1]]), 0) + cum
        cb = self.cum_blank[:, None]
        b = torch.logcumsumexp(torch.cat([torch.full_like(first, NEG)[None], n[:-1] - cb[:-1]]), 0) + cb
        psi = torch.logsumexp(torch.cat([first[None], phi[:-1] + x[1:]]), 0)
        return torch.stack([n, b], 1), psi

    @staticmethod
    def final(r: torch.Tensor) -> float:
        return float(torch.logaddexp(r[-1, 0], r[-1, 1]))


def _hotword_sequences(tok: AsrTokenizer, words: tuple[str, ...]) -> list[list[int]]:
    """Token sequences of each hotword, as it appears at a word start and (without `▁`) inside a word."""
    seqs = []
    for w in words:
        ids = tok.encode(w)
        seqs.append(ids)
        first = tok.piece(ids[0]) if ids else ""
        if first == "▁":
            seqs.append(ids[1:])
        elif first.startswith("▁") and first[1:] and tok.tok.token_to_id(first[1:]) is not None:
            seqs.append([tok.tok.token_to_id(first[1:])] + ids[1:])
    return [s for s in seqs if s]


def _partial_match(seq: list[int], hot: list[list[int]]) -> tuple[int, int]:
    """(longest suffix of `seq` that is a proper prefix of a hotword, longest hotword `seq` ends with)."""
    partial = max((k for s in hot for k in range(1, min(len(s), len(seq) + 1)) if seq[-k:] == s[:k]), default=0)
    full = max((len(s) for s in hot if len(seq) >= len(s) and seq[-len(s):] == s), default=0)
    return partial, full


def _hotword_bonus(hot: list[list[int]], hyp: list[int], vocab: int, bonus: float) -> torch.Tensor:
    """Per-token score change from hotword biasing with retraction (as in context-graph biasing).

    Each token that extends a partial hotword match earns `bonus`; a completed hotword keeps what it
    earned; a token that breaks a partial match (or <eos> during one) gives the earned bonus back, so a
    hypothesis only profits from hotwords it actually says.
    """
    matched, _ = _partial_match(hyp, hot)
    out = torch.full((vocab,), -bonus * matched)
    nexts = {s[k] for s in hot for k in range(len(s)) if k == 0 or (len(hyp) >= k and hyp[-k:] == s[:k])}
    for c in nexts:
        partial, full = _partial_match(hyp + [c], hot)
        out[c] = bonus * (max(partial, full) - matched)
    return out


def _text_mask(tok: AsrTokenizer, vocab: int) -> torch.Tensor:
    """Tokens the decoder may emit after the prompt: subword pieces and <eos> (not specials or times)."""
    mask = torch.full((vocab,), NEG)
    mask[tok.text_begin:] = 0.0
    mask[tok.eos] = 0.0
    mask[tok.unk] = NEG
    return mask


@torch.no_grad()
def beam_search(model, tok: AsrTokenizer, enc: torch.Tensor, enc_len: int, prefix: list[int],
                ctc_log_probs: torch.Tensor | None, opts: DecodingOptions) -> tuple[list[int], float]:
    """Joint CTC/attention beam search for one utterance; beam_size 1 and ctc_weight 0 is greedy decoding.

    Steps: score every live hypothesis's next token with the decoder (log-softmax, restricted to text and
    <eos>); keep its `ceil(1.5 * beam)` best candidates plus <eos>; add the CTC prefix score difference,
    the length bonus and any hotword bonus; keep the `beam` best; move those ending in <eos> to the finished
    list; stop when `beam` hypotheses have finished or no live one can beat the best finished.
    """
    w = opts.ctc_weight if ctc_log_probs is not None else 0.0
    enc1, len1 = enc[None, :enc_len], torch.tensor([enc_len])
    vocab = model.config.vocab_size
    mask = _text_mask(tok, vocab)
    scorer = CTCPrefixScorer(ctc_log_probs[:enc_len]) if w > 0 else None
    hot = _hotword_sequences(tok, opts.hotwords)
    r0, psi0 = (scorer.initial(), 0.0) if scorer else (None, 0.0)
    live = [([], 0.0, r0, psi0)]  # (text tokens, score, ctc state, ctc prefix log-prob)
    done: list[tuple[list[int], float]] = []
    limit = min(opts.max_tokens, max(enc_len, 1))
    n_cand = max(math.ceil(1.5 * opts.beam_size), 2)
    for _ in range(limit + 1):
        ids = torch.tensor([prefix + h[0] for h in live])
        att = model.decode(ids, enc1.expand(len(live), -1, -1), len1.expand(len(live)), last_only=True)
        att = att[:, 0].float().log_softmax(-1) + mask
        grown = []
        for (hyp, score, r, psi), row in zip(live, att):
            if hot:
                row = row + _hotword_bonus(hot, hyp, vocab, opts.hotword_bonus)
            cands = torch.topk(row, min(n_cand, vocab)).indices
            if not (cands == tok.eos).any():
                cands = torch.cat([cands, torch.tensor([tok.eos])])
            text_c = cands[cands != tok.eos]
            new_r = new_psi = None
            if scorer is not None and len(text_c):
                new_r, new_psi = scorer.extend(r, hyp[-1] if hyp else None, text_c)
            k = 0
            for c in cands.tolist():
                if c == tok.eos:
                    ctc = (CTCPrefixScorer.final(r) - psi) if scorer else 0.0
                    grown.append((hyp, score + (1 - w) * float(row[c]) + w * ctc, None, None, True))
                    continue
                ctc = float(new_psi[k]) - psi if scorer else 0.0
                state = new_r[:, :, k] if scorer else None
                grown.append((hyp + [c], score + (1 - w) * float(row[c]) + w * ctc + opts.length_bonus, state,
                              float(new_psi[k]) if scorer else 0.0, False))
                k += 1
        grown.sort(key=lambda g: -g[1])
        live = []
        for hyp, score, r, psi, ended in grown[: opts.beam_size]:
            if ended:
                done.append((hyp, score))
            else:
                live.append((hyp, score, r, psi))
        best_done = max((s for _, s in done), default=-math.inf)
        # scores only fall as tokens are added, except for the bonuses; stop when none can catch up
        if len(done) >= opts.beam_size or not live or all(
                s + opts.length_bonus * (limit - len(h)) < best_done for h, s, _, _ in live):
            break
    if not done:
        done = [(h, s) for h, s, _, _ in live]
    return max(done, key=lambda d: d[1])


@torch.no_grad()
def decode(model, tok: AsrTokenizer, enc: torch.Tensor, enc_len: torch.Tensor,
           opts: DecodingOptions = DecodingOptions()) -> list[DecodingResult]:
    """Decode a batch of encoder states (B, T', d) into text, language and region per item."""
    ctc = model.ctc_log_probs(enc)
    detected = detect_language(model, tok, enc, enc_len, opts.language, opts.region)
    results = []
    for i, (lang, region, conf) in enumerate(detected):
        n = int(enc_len[i])
        best_path = ctc_greedy(ctc[i, :n])
        tokens, score = best_path, 0.0
        if (best_path or not opts.silence_guard) and not opts.ctc_only:
            tokens, score = beam_search(model, tok, enc[i], n, tok.prefix(lang, region), ctc[i], opts)
        # else: nothing heard, so no text, whatever the decoder would say
        res = DecodingResult(tok.decode(tokens), tokens, lang, region, conf, score)
        if opts.word_timestamps and tokens:
            res.words = word_times(tok, tokens, forced_align(ctc[i, :n], tokens), lang)
        results.append(res)
    return results


def forced_align(log_probs: torch.Tensor, tokens: list[int], blank: int = 0) -> list[tuple[int, int]]:
    """Viterbi alignment of `tokens` to CTC posteriors (T, V): first and last frame of each token.

    The states are the tokens interleaved with blanks (2U + 1); a state is reached from itself, the one
    before, or two before when that skips a blank between different tokens. Backtracking the best path
    gives each token's frames. Tokens that need more frames than exist get the frames there are.
    """
    t_len, u = log_probs.shape[0], len(tokens)
    if u == 0:
        return []
    states = torch.tensor([blank if s % 2 == 0 else tokens[s // 2] for s in range(2 * u + 1)])
    emit = log_probs.float()[:, states]  # (T, S)
    s_len = len(states)
    can_skip = torch.zeros(s_len, dtype=torch.bool)
    for s in range(3, s_len, 2):
        can_skip[s] = tokens[s // 2] != tokens[s // 2 - 1]
    score = torch.full((s_len,), NEG)
    score[0], score[1] = emit[0, 0], emit[0, 1]
    back = torch.zeros(t_len, s_len, dtype=torch.long)
    for t in range(1, t_len):
        stay = score
        step = torch.cat([torch.tensor([NEG]), score[:-1]])
        skip = torch.where(can_skip, torch.cat([torch.tensor([NEG, NEG]), score[:-2]]), torch.tensor(NEG))
        cand = torch.stack([stay, step, skip])  # (3, S)
        best, arg = cand.max(0)
        back[t] = arg
        score = best + emit[t]
    s = s_len - 1 if s_len == 1 or score[-1] >= score[-2] else s_len - 2
    spans: dict[int, list[int]] = {}
    for t in range(t_len - 1, -1, -1):
        if s % 2 == 1:
            spans.setdefault(s // 2, []).append(t)
        s -= int(back[t, s]) if t > 0 else 0
    out, prev = [], 0
    for k in range(u):
        frames = spans.get(k, [prev])
        out.append((min(frames), max(frames)))
        prev = max(frames)
    return out


def word_times(tok: AsrTokenizer, tokens: list[int], spans: list[tuple[int, int]], lang: str) -> list[dict]:
    """Group aligned tokens into words (`▁` starts a word; each token is a word in scripts without spaces)."""
    words: list[dict] = []
    for t, (f0, f1) in zip(tokens, spans):
        piece = tok.piece(t)
        text = piece.replace("▁", "")
        new_word = lang in NO_SPACES or piece.startswith("▁") or not words
        if new_word and text:
            words.append({"word": text, "start": round(f0 * FRAME_SECONDS, 3), "end": round((f1 + 1) * FRAME_SECONDS, 3)})
        elif text:
            words[-1]["word"] += text
            words[-1]["end"] = round((f1 + 1) * FRAME_SECONDS, 3)
    return words
