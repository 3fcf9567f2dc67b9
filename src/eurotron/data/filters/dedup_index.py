"""Dedup decisions: which documents' keys (`dedup.DedupKeys`) were seen in a kept document before.

One `Deduplicator` runs in the main process and sees the documents in corpus order, so the first
occurrence is kept whatever the number of workers. The seen keys are a hash table per kind of key
when the C extension is built (`KeyTable`, ~11-23 bytes per key), else sorted numpy runs merged as
they grow (`KeyIndex`, 8 bytes per key): 1M documents with 9 bands hold 10M keys.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .. import native
from .dedup import DedupKeys


class KeyIndex:
    """A set of uint64 keys as sorted runs, merged when a run is no larger than half the one before
    (so there are O(log n) runs and each key is merged O(log n) times)."""

    def __init__(self) -> None:
        self.runs: List[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        flat = keys.reshape(-1)
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]  # sorted queries: each binary search starts where the last one ended
        hit = np.zeros(len(flat), dtype=bool)
        for run in self.runs:
            at = np.searchsorted(run, ordered)
            inside = at < len(run)
            hit[inside] |= run[at[inside]] == ordered[inside]
        found = np.empty(len(flat), dtype=bool)
        found[order] = hit
        return found.reshape(keys.shape)

    def add(self, keys: np.ndarray) -> None:
        if keys.size == 0:
            return
        self.runs.append(_sorted_unique(keys.reshape(-1)))
        while len(self.runs) > 1 and len(self.runs[-1]) * 2 >= len(self.runs[-2]):
            last = self.runs.pop()
            self.runs[-1] = _sorted_unique(np.concatenate([self.runs[-1], last]))


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct keys (a stable sort is near-linear on two concatenated sorted runs)."""
    ordered = np.sort(keys, kind="stable")
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class KeyTable:
    """A set of uint64 keys for the C extension: a hash table (open addressing, linear probing) in one
    numpy array of a power-of-two number of slots, 0 marking an empty one, and one item after them
    that says whether the key 0 is in the set. Grown before each batch so that it stays at most
    `MAX_LOAD` full: 8 / load bytes per key, 11-23."""

    MAX_LOAD = 0.7

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.slots = np.zeros(capacity + 1, dtype=np.uint64)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes

    def __len__(self) -> int:
        return self.count

    def reserve(self, more: int) -> None:
        """Room for `more` new keys within MAX_LOAD."""
        capacity = len(self.slots) - 1
        if self.count + more <= capacity * self.MAX_LOAD:
            return
        while self.count + more > capacity * self.MAX_LOAD:
            capacity *= 2
        old, self.slots = self.slots, np.zeros(capacity + 1, dtype=np.uint64)
        self.slots[-1] = old[-1]
        native.ext.set_add_keys(self.slots, old[:-1][old[:-1] != 0])


_CODES = (None, "dedup_exact", "dedup_near")


class Deduplicator:
    """Keeps the first occurrence; later exact or near duplicates of a kept document are removed.

    With the C extension the seen keys are hash tables (`KeyTable`) and the decisions are taken in
    C; without it, sorted runs (`KeyIndex`) and the loop below: the same decisions either way."""

    def __init__(self, exact: bool, near: bool) -> None:
        self.exact, self.near = exact, near
        self.native = native.available()
        self.exact_index, self.band_index = (KeyTable(), KeyTable()) if self.native else (KeyIndex(), KeyIndex())

    @property
    def nbytes(self) -> int:
        return self.exact_index.nbytes + self.band_index.nbytes

    def decide(self, keys: DedupKeys) -> List[Optional[str]]:
        """Per document, in order: None (kept, its keys remembered), "dedup_exact" or "dedup_near"."""
        n = len(keys.exact)
        if n == 0 or not (self.exact or self.near):
            return [None] * n
        if self.native:
            return self._decide_native(keys)
        seen_exact = self.exact_index.contains(keys.exact) if self.exact else np.zeros(n, dtype=bool)
        seen_band = (self.band_index.contains(keys.bands).any(axis=1) & keys.has_bands
                     if self.near and keys.bands.shape[1] else np.zeros(n, dtype=bool))
        exact_list = keys.exact.tolist()
        band_rows = keys.bands.tolist()
        batch_exact: set = set()
        batch_bands: set = set()
        reasons: List[Optional[str]] = []
        kept = np.zeros(n, dtype=bool)
        for i in range(n):
            if self.exact and (seen_exact[i] or exact_list[i] in batch_exact):
                reasons.append("dedup_exact")
                continue
            if self.near and keys.has_bands[i] and (seen_band[i] or not batch_bands.isdisjoint(band_rows[i])):
                reasons.append("dedup_near")
                continue
            reasons.append(None)
            kept[i] = True
            batch_exact.add(exact_list[i])
            if keys.has_bands[i]:
                batch_bands.update(band_rows[i])
        if self.exact:
            self.exact_index.add(keys.exact[kept])
        if self.near and keys.bands.shape[1]:
            self.band_index.add(keys.bands[kept & keys.has_bands])
        return reasons

    def _decide_native(self, keys: DedupKeys) -> List[Optional[str]]:
        n = len(keys.exact)
        self.exact_index.reserve(n if self.exact else 0)
        self.band_index.reserve(keys.bands.size if self.near else 0)
        codes = np.empty(n, dtype=np.uint8)
        added = native.ext.dedup_decide(np.ascontiguousarray(keys.exact, dtype=np.uint64),
                                        np.ascontiguousarray(keys.bands, dtype=np.uint64),
                                        np.ascontiguousarray(keys.has_bands, dtype=bool), self.exact, self.near,
                                        self.exact_index.slots, self.band_index.slots, codes)
        self.exact_index.count += added[0]
        self.band_index.count += added[1]
        return [_CODES[code] for code in codes.tolist()]
