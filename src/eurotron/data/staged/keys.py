"""The dedup keys a filter task writes and the dedup tasks read: one row per (kind, key, document),
bucketed by key hash so that dedup task j reads only rows with key % dedup_tasks == j."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..filters.dedup import DedupKeys

EXACT, BAND = 0, 1  # kinds: the Deduplicator keeps two separate key sets
ROW = np.dtype([("kind", "u1"), ("key", "<u8"), ("doc", "<u8")])
KEYS_FILE, OFFSETS_FILE = "keys.npy", "offsets.npy"


def key_rows(keys: DedupKeys, first_doc: int, exact: bool, near: bool) -> np.ndarray:
    """Rows for the candidates of one batch (documents numbered from `first_doc`): the exact key of
    each, and the band keys of those that have bands (as `Deduplicator` looks them up)."""
    n = len(keys.exact)
    parts: List[np.ndarray] = []
    docs = np.arange(first_doc, first_doc + n, dtype=np.uint64)
    if exact and n:
        rows = np.empty(n, ROW)
        rows["kind"], rows["key"], rows["doc"] = EXACT, keys.exact, docs
        parts.append(rows)
    if near and n and keys.bands.shape[1]:
        has = np.flatnonzero(keys.has_bands)
        bands = keys.bands[has]
        rows = np.empty(bands.size, ROW)
        rows["kind"], rows["key"] = BAND, bands.reshape(-1)
        rows["doc"] = np.repeat(docs[has], bands.shape[1])
        parts.append(rows)
    return np.concatenate(parts) if parts else np.empty(0, ROW)


def write_buckets(directory: Path, rows: np.ndarray, buckets: int) -> None:
    bucket = (rows["key"] % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    np.save(directory / KEYS_FILE, rows[order])
    np.save(directory / OFFSETS_FILE, np.searchsorted(bucket[order], np.arange(buckets + 1)).astype(np.int64))


def read_bucket(directory: Path, bucket: int) -> np.ndarray:
    offsets = np.load(directory / OFFSETS_FILE)
    keys = np.load(directory / KEYS_FILE, mmap_mode="r")
    return np.array(keys[offsets[bucket]:offsets[bucket + 1]])


def colliding(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The rows of keys held by two or more documents, sorted by (kind, key, doc), and a group id per
    row (one per distinct key)."""
    order = np.lexsort((rows["doc"], rows["key"], rows["kind"]))
    rows = rows[order]
    if len(rows) > 1:  # a document holding one key twice (two equal bands) counts once
        same = (rows["kind"][1:] == rows["kind"][:-1]) & (rows["key"][1:] == rows["key"][:-1])
        rows = rows[np.concatenate(([True], ~(same & (rows["doc"][1:] == rows["doc"][:-1]))))]
    if not len(rows):
        return rows, np.empty(0, np.int64)
    starts = np.concatenate(([True], (rows["kind"][1:] != rows["kind"][:-1]) | (rows["key"][1:] != rows["key"][:-1])))
    group = np.cumsum(starts) - 1
    sizes = np.bincount(group)
    keep = sizes[group] >= 2
    rows, group = rows[keep], group[keep]
    return rows, np.unique(group, return_inverse=True)[1].astype(np.int64)
