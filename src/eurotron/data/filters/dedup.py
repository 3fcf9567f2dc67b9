"""Deduplication: exact (normalised-text hash) and near-duplicate (MinHash-LSH), streaming.

Keys are computed where documents are processed (worker processes); the decision is taken in
corpus order by one `Deduplicator` (the main process), so the first occurrence is kept and the
result does not depend on the number of workers.

* **Exact**: a 64-bit BLAKE2b of the text's words (NFC, case-folded as `WordBatch` says, joined by
  single spaces): texts that differ only in case, spacing or punctuation are exact duplicates.
* **Near**: word n-gram shingles (``shingle_words``, default 5) of the same words; a MinHash
  signature of ``num_perm`` values; LSH with ``bands`` x ``rows`` chosen for ``threshold`` (the
  estimated Jaccard similarity from which pairs should collide). Each band of a document becomes a
  64-bit key; a document is a near duplicate when any of its band keys was seen in a kept document.
  Documents shorter than n words are one shingle; documents without words have no band keys.

Shingles are hashed for a whole batch at once: a polynomial rolling hash over the bytes of the
words (mod 2^32), so no Python code runs per shingle. The signature is a one-permutation MinHash
with optimal densification (one hash per shingle instead of ``num_perm``; see `signatures`).
When the C extension is built (`eurotron.data.native`), the word layout, band keys and exact keys
come from it instead, bit for bit the same: the numpy code here is the reference and the fallback.

The decisions (which keys were seen) are `dedup_index.Deduplicator`'s.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import native
from ..errors import DataError

_P32 = np.uint32(0x01000193)  # FNV-1 32-bit prime: odd, so invertible mod 2^32
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# Densification probes per bin before falling back to a scan (only texts with few shingles get there).
_PROBES = 24


# Bytes that belong to words: ASCII letters and digits, and every byte of a non-ASCII character.
_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[[*range(48, 58), *range(65, 91), *range(97, 123), *range(128, 256)]] = True


@dataclass
class WordBatch:
    """The words of a batch of texts, laid out once for both kinds of keys.

    A word is a run of ASCII letters and digits or of non-ASCII bytes in the UTF-8 text (NFC);
    everything else separates words. Case is folded on the bytes (``b | 0x20``): exact for ASCII,
    and it also maps most accented Latin capitals (É, Ü, Ø ...) and some Greek and Cyrillic ones to
    their small letters, whose UTF-8 bytes differ by 0x20. ``clean`` holds every text's words, each
    followed by one space, so neither key depends on spacing or punctuation.
    """

    clean: np.ndarray  # uint8
    word_starts: np.ndarray  # where each word starts in `clean`
    word_ends: np.ndarray  # ... and ends (at its space)
    per_text: np.ndarray  # words per text
    first_word: np.ndarray  # index of each text's first word
    raw: bytes  # the texts' UTF-8 (NFC), each followed by "\n"
    text_ends: np.ndarray  # where each text's "\n" ends in `raw`

    @classmethod
    def of(cls, texts: Sequence[str]) -> "WordBatch":
        # An NFC text comes back as itself, whose UTF-8 CPython may already hold (join_utf8).
        raw, text_ends = native.join_utf8(native.nfc(texts), b"\n")
        layout = _native_layout if len(texts) and native.available() else _numpy_layout
        return cls(*layout(raw, text_ends), raw, text_ends)

    def text_bytes(self, i: int) -> bytes:
        """Text `i`'s UTF-8 (NFC)."""
        return self.raw[int(self.text_ends[i - 1]) if i else 0:int(self.text_ends[i]) - 1]


Layout = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _numpy_layout(data: bytes, text_ends: np.ndarray) -> Layout:
    """WordBatch's arrays from the joined texts (the reference for `_native_layout`)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    word = _WORD_BYTES[raw]
    prev = np.zeros_like(word)
    prev[1:] = word[:-1]
    starts_in_raw = np.flatnonzero(word & ~prev)
    clean = np.where(word, raw | np.uint8(0x20), np.uint8(32))[word | prev]
    word_ends = np.flatnonzero(clean == 32)
    word_starts = np.concatenate(([0], word_ends[:-1] + 1)) if len(word_ends) else word_ends
    per_text = np.bincount(np.searchsorted(text_ends, starts_in_raw, side="right"),
                           minlength=len(text_ends)).astype(np.int64)
    first_word = np.concatenate(([0], np.cumsum(per_text)[:-1])) if len(per_text) else per_text
    return clean, word_starts, word_ends, per_text, first_word


def _native_layout(data: bytes, text_ends: np.ndarray) -> Layout:
    size, words = native.ext.word_count(data)
    # One item more than needed: the C loop writes one ahead.
    clean, starts, ends = np.empty(size + 1, np.uint8), np.empty(words + 1, np.int64), np.empty(words + 1, np.int64)
    per_text, first_word = np.empty(len(text_ends), np.int64), np.empty(len(text_ends), np.int64)
    native.ext.word_layout(data, text_ends, clean, starts, ends, per_text, first_word)
    return clean[:size], starts[:words], ends[:words], per_text, first_word


def _blake64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def exact_keys(texts: Sequence[str], batch: Optional[WordBatch] = None) -> np.ndarray:
    """uint64 per text: BLAKE2b of its words (see WordBatch) joined by single spaces — the same
    words in the same order, whatever the ASCII case, spacing or punctuation, are one text. A text
    without words is hashed as its raw bytes."""
    b = batch if batch is not None else WordBatch.of(texts)
    if native.available():
        out = np.empty(len(b.per_text), dtype=np.uint64)
        native.ext.exact_keys(b.clean, b.word_starts, b.word_ends, b.per_text, b.first_word, out)
        for i in np.flatnonzero(b.per_text == 0).tolist():
            out[i] = _blake64(b"\x00" + b.text_bytes(i))
        return out
    per_text, has = b.per_text.tolist(), b.per_text > 0
    starts, ends = np.zeros(len(per_text), np.int64), np.zeros(len(per_text), np.int64)
    starts[has] = b.word_starts[b.first_word[has]]
    ends[has] = b.word_ends[(b.first_word + b.per_text - 1)[has]]
    clean = b.clean.tobytes()
    return np.array([_blake64(clean[a:z] if n else b"\x00" + b.text_bytes(i))
                     for i, (n, a, z) in enumerate(zip(per_text, starts.tolist(), ends.tolist()))], dtype=np.uint64)


def exact_key(text: str) -> int:
    return int(exact_keys([text])[0])


def _mix32(z: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (wrapping uint32 arithmetic)."""
    z = (z ^ (z >> np.uint32(16))) * np.uint32(0x85EBCA6B)
    z = (z ^ (z >> np.uint32(13))) * np.uint32(0xC2B2AE35)
    return z ^ (z >> np.uint32(16))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (wrapping uint64 arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=16)
def lsh_parameters(threshold: float, num_perm: int) -> Tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising false positives below `threshold` plus
    false negatives above it (areas under the S-curve 1 - (1 - s^rows)^bands), equally weighted."""
    if not 0.0 < threshold < 1.0:
        raise DataError(f"filters.dedup.threshold={threshold}: must lie strictly between 0 and 1")
    if num_perm < 2:
        raise DataError(f"filters.dedup.num_perm={num_perm}: must be >= 2 (MinHash bins; 128 is usual)")
    s = np.linspace(0.0, 1.0, 1001)
    best: Optional[Tuple[float, int, int]] = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            collide = 1.0 - (1.0 - s ** rows) ** bands
            error = np.trapezoid(np.where(s < threshold, collide, 1.0 - collide), s)
            if best is None or error < best[0] - 1e-12:
                best = (float(error), bands, rows)
    assert best is not None
    return best[1], best[2]


@dataclass
class DedupKeys:
    exact: np.ndarray  # uint64 [n]
    bands: np.ndarray  # uint64 [n, bands] (0 columns when near-dedup is off)
    has_bands: np.ndarray  # bool [n]: False for texts without words


class MinHasher:
    def __init__(self, num_perm: int = 128, shingle_words: int = 5, threshold: float = 0.8, seed: int = 0) -> None:
        if num_perm < 2:
            raise DataError(f"filters.dedup.num_perm={num_perm}: must be at least 2")
        if shingle_words < 1:
            raise DataError(f"filters.dedup.shingle_words={shingle_words}: must be at least 1")
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self.bands, self.rows = lsh_parameters(threshold, num_perm)
        rng = np.random.default_rng([seed, num_perm])
        self.seed32 = np.uint32(rng.integers(0, 2**32, dtype=np.uint64))
        # Densification: empty bin j looks at bins probes[j, 0], probes[j, 1], ... (never itself).
        self.probes = (np.arange(num_perm)[:, None] + rng.integers(1, num_perm, (num_perm, _PROBES))) % num_perm
        self.band_salt = _mix(np.arange(1, self.bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        self._powers = np.ones(1, dtype=np.uint32)
        self._inverse_powers = np.ones(1, dtype=np.uint32)

    # ------------------------------------------------------------------------------------ shingles
    def _power_tables(self, length: int) -> Tuple[np.ndarray, np.ndarray]:
        if len(self._powers) < length + 1:
            size = max(length + 1, 2 * len(self._powers))
            inverse = np.uint32(pow(int(_P32), -1, 2**32))
            with np.errstate(over="ignore"):
                self._powers = np.concatenate(([np.uint32(1)], np.cumprod(np.full(size - 1, _P32, np.uint32),
                                                                           dtype=np.uint32)))
                self._inverse_powers = np.concatenate(([np.uint32(1)], np.cumprod(np.full(size - 1, inverse, np.uint32),
                                                                                   dtype=np.uint32)))
        return self._powers, self._inverse_powers

    def shingle_hashes(self, texts: Sequence[str], batch: Optional[WordBatch] = None) -> Tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every shingle of every text, and each text's shingle count: a
        polynomial rolling hash (mod 2^32) over `clean`, so no Python code runs per shingle."""
        n = self.shingle_words
        b = batch if batch is not None else WordBatch.of(texts)
        counts = np.where(b.per_text > 0, np.maximum(b.per_text - n + 1, 1), 0)
        if not counts.any():
            return np.zeros(0, dtype=np.uint32), counts
        powers, inverse = self._power_tables(len(b.clean))
        with np.errstate(over="ignore"):
            prefix = np.zeros(len(b.clean) + 1, dtype=np.uint32)
            np.cumsum((b.clean.astype(np.uint32) + np.uint32(1)) * powers[:len(b.clean)], out=prefix[1:],
                      dtype=np.uint32)
            has = b.per_text > 0
            words, first_word, shingles = b.per_text[has], b.first_word[has], counts[has]
            owner = np.repeat(np.arange(len(words)), shingles)
            offset = np.arange(int(shingles.sum())) - np.repeat(np.cumsum(shingles) - shingles, shingles)
            start_word = first_word[owner] + offset
            end_word = np.minimum(start_word + n - 1, first_word[owner] + words[owner] - 1)
            starts, ends = b.word_starts[start_word], b.word_ends[end_word]
            value = (prefix[ends] - prefix[starts]) * inverse[starts]
            value = _mix32(value ^ (ends - starts).astype(np.uint32))
        return value, counts

    # ------------------------------------------------------------------------------------- minhash
    def signatures(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """uint32 [texts with shingles, num_perm]: one-permutation MinHash with optimal densification.

        One hash per shingle (a seeded mix of its 32-bit hash) picks one of ``num_perm`` bins by its
        high bits; each bin keeps the minimum it saw (Li, Owen & Zhang 2012). An empty bin takes the
        value of the first non-empty bin along its own fixed probe sequence (Shrivastava 2017), which
        depends only on the bin, so two texts agree in a bin with probability equal to their Jaccard
        similarity, as with ``num_perm`` independent permutations, at the cost of one.
        """
        owners = np.flatnonzero(counts)
        n, bins = len(owners), self.num_perm
        if n == 0:
            return np.zeros((0, bins), dtype=np.uint32)
        row = np.repeat(np.arange(n, dtype=np.int64), counts[owners])
        with np.errstate(over="ignore"):
            mixed = _mix32(hashes ^ self.seed32)
        where = row * bins + ((mixed.astype(np.uint64) * np.uint64(bins)) >> np.uint64(32)).astype(np.int64)
        sig = np.full(n * bins, np.iinfo(np.uint32).max, dtype=np.uint32)
        np.minimum.at(sig, where, mixed)
        filled = np.zeros(n * bins, dtype=bool)
        filled[where] = True
        empty = np.flatnonzero(~filled)
        if len(empty):
            sig[empty] = sig[self._donors(empty, filled, bins)]
        return sig.reshape(n, bins)

    def _donors(self, empty: np.ndarray, filled: np.ndarray, bins: int) -> np.ndarray:
        """For each empty flat position, the flat position of the bin it copies."""
        donor = np.full(len(empty), -1, dtype=np.int64)
        base, col = empty - empty % bins, empty % bins
        pending = np.arange(len(empty))
        for attempt in range(self.probes.shape[1]):
            candidate = base[pending] + self.probes[col[pending], attempt]
            hit = filled[candidate]
            donor[pending[hit]] = candidate[hit]
            pending = pending[~hit]
            if not len(pending):
                return donor
        # Texts with very few shingles: the next non-empty bin to the right, circularly (a function
        # of the bin and the text's set of filled bins, like the probes).
        for i in pending:
            row_filled = np.flatnonzero(filled[base[i]:base[i] + bins])
            after = row_filled[row_filled > col[i]]
            donor[i] = base[i] + (after[0] if len(after) else row_filled[0])
        return donor

    def band_keys(self, texts: Sequence[str], batch: Optional[WordBatch] = None) -> Tuple[np.ndarray, np.ndarray]:
        """uint64 [n, bands] band keys (rows of zeros for texts without words) and a has-words mask."""
        b = batch if batch is not None else WordBatch.of(texts)
        if native.available():  # the same computation fused per text: shingles → signature → keys
            keys, has = np.empty((len(b.per_text), self.bands), np.uint64), np.empty(len(b.per_text), bool)
            native.ext.band_keys(b.clean, b.word_starts, b.word_ends, b.per_text, b.first_word, self.shingle_words,
                                 int(self.seed32), self.num_perm, self.probes, self.band_salt, self.rows, keys, has)
            return keys, has
        hashes, counts = self.shingle_hashes(texts, b)
        keys = np.zeros((len(texts), self.bands), dtype=np.uint64)
        has = counts > 0
        if has.any():
            with np.errstate(over="ignore"):
                sig = self.signatures(hashes, counts)[:, :self.bands * self.rows].astype(np.uint64)
                sig = sig.reshape(len(sig), self.bands, self.rows)
                key = np.broadcast_to(self.band_salt, sig.shape[:2]).copy()
                for r in range(self.rows):
                    key = _mix(key ^ sig[:, :, r])
            keys[has] = key
        return keys, has
