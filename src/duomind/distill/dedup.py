"""Near-duplicate prompts: MinHash signatures and LSH banding, verified by exact Jaccard similarity.

MinHash (Broder, "On the resemblance and containment of documents", 1997) estimates the Jaccard
similarity of two shingle sets from the agreement of their minimum hashes under random permutations;
LSH banding (Indyk & Motwani 1998; Leskovec et al., Mining of Massive Datasets ch. 3) buckets signatures
so that only likely-similar pairs are compared. Pangu Embedded (arXiv 2505.22375) removes near-duplicate
prompts this way for data diversity.

Shingles are word n-grams of a normalised prompt (lower case, numbers kept whole, punctuation as its
own token), so "What is 12 + 34?" and "what is 12+34 ?" are the same prompt while "What is 12 + 35?"
is a different one: for arithmetic a changed number is a different problem, not a near duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"\d+|[^\W\d_]+|[^\w\s]")


def shingles(text: str, n: int = 2) -> set[str]:
    """Word n-grams of the normalised text (the text itself as one shingle when shorter than n words)."""
    words = _TOKEN.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most selective banding whose chance of pairing two prompts at `threshold` is >= recall.

    Pairs found are verified exactly afterwards, so the banding only needs to miss few true duplicates;
    fewer false candidates (more rows per band) just saves comparisons.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands < 1:
            break
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


class MinHashLSH:
    """An index of texts; `query` returns the keys of indexed texts with Jaccard >= threshold.

    Args:
        threshold: Jaccard similarity from which two texts are near duplicates.
        num_perm: MinHash permutations (signature length).
        ngram: Word n-gram size of the shingles.
        seed: Seed of the hash permutations (the same seed gives the same signatures everywhere).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 2, seed: int = 1) -> None:
        self.threshold, self.ngram = threshold, ngram
        rng = np.random.default_rng(seed)
        # multiply-add-shift hashing of 32-bit keys (Dietzfelbinger 1996): ((a * x + b) mod 2^64) >> 32 with
        # random 64-bit a, b is strongly universal; uint64 arithmetic wraps, which is the mod 2^64.
        # (a * x + b) mod p with small a would be nearly monotonic in x, making every permutation pick
        # the same minimum, so the high bits of a wrapped product are what mix.
        self.a = rng.integers(0, 1 << 64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 1 << 64, num_perm, dtype=np.uint64, endpoint=False)
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self.buckets: list[dict[bytes, list[str]]] = [{} for _ in range(self.bands)]
        self.sets: dict[str, set[str]] = {}

    def signature(self, grams: set[str]) -> np.ndarray:
        import zlib

        h = np.array([zlib.crc32(g.encode()) for g in sorted(grams)], dtype=np.uint64)  # (S,)
        with np.errstate(over="ignore"):
            mixed = (h[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)  # (S, num_perm)
        return mixed.min(axis=0)  # (num_perm,)

    def _keys(self, sig: np.ndarray) -> Iterable[tuple[int, bytes]]:
        for band in range(self.bands):
            yield band, sig[band * self.rows:(band + 1) * self.rows].tobytes()

    def query(self, text: str) -> list[str]:
        """Keys of indexed texts that are near duplicates of `text` (exact Jaccard >= threshold)."""
        grams = shingles(text, self.ngram)
        candidates: set[str] = set()
        for band, key in self._keys(self.signature(grams)):
            candidates.update(self.buckets[band].get(key, ()))
        return sorted(k for k in candidates if jaccard(grams, self.sets[k]) >= self.threshold)

    def add(self, key: str, text: str) -> None:
        if key in self.sets:
            raise ValueError(f"key {key!r} is already in the index; keys must be unique.")
        grams = shingles(text, self.ngram)
        self.sets[key] = grams
        for band, bucket in self._keys(self.signature(grams)):
            self.buckets[band].setdefault(bucket, []).append(key)


def dedup(texts: Sequence[str], against: Sequence[str] = (), threshold: float = 0.8, num_perm: int = 128,
          ngram: int = 2, seed: int = 1) -> tuple[list[int], dict[int, str]]:
    """Keep the first of every group of near-duplicate texts, and drop texts near any of `against`.

    Returns:
        (indices kept, {index dropped: the key it duplicates, "t<i>" for texts[i] or "a<j>" for against[j]}).
    """
    index = MinHashLSH(threshold, num_perm, ngram, seed)
    for j, text in enumerate(against):
        index.add(f"a{j}", text)
    kept, dropped = [], {}
    for i, text in enumerate(texts):
        hits = index.query(text)
        if hits:
            dropped[i] = hits[0]
            continue
        kept.append(i)
        index.add(f"t{i}", text)
    return kept, dropped
