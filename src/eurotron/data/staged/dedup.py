"""Stage 2: the dedup decisions over the whole corpus, in two steps.

`run_partition` (one task per key bucket j, key % dedup_tasks == j) reads its bucket of every filter
task's keys (so it holds about 1/dedup_tasks of them) and writes the postings of the keys held by
two or more documents: only those can remove a document.

`run_resolve` (one task) replays `Deduplicator`'s rule — a document goes when its exact key, else
(when it has bands) one of its band keys, belongs to an *earlier kept* document; a kept document's
keys are remembered — over the documents named in the postings, in corpus order. A key held by one
document never removes anyone, so the decisions equal the one-process ones, with memory in
proportion to the duplicated keys rather than to the corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from .keys import BAND, EXACT, ROW, colliding, read_bucket

POSTINGS_FILE = "postings.npy"
REMOVED_DTYPE = np.dtype([("candidate", "<u8"), ("code", "u1")])
CODES = (None, "dedup_exact", "dedup_near")


def removed_file(task: int) -> str:
    return f"removed_{task:05d}.npy"


def run_partition(filter_dirs: List[Path], first_docs: List[int], bucket: int, out: Path) -> Dict[str, Any]:
    parts = []
    for directory, first in zip(filter_dirs, first_docs):
        rows = read_bucket(directory, bucket)
        rows["doc"] += np.uint64(first)  # global candidate number: corpus order
        parts.append(rows)
    rows = np.concatenate(parts) if parts else np.empty(0, ROW)
    held = len(rows)
    rows, _ = colliding(rows)
    np.save(out / POSTINGS_FILE, rows)
    return {"keys": held, "posting_rows": len(rows)}


def run_resolve(partition_dirs: List[Path], candidates: List[int], exact: bool, near: bool, out: Path) -> Dict[str, Any]:
    rows = [np.load(d / POSTINGS_FILE) for d in partition_dirs]
    rows = [r for r in rows if len(r)]
    all_rows = np.concatenate(rows) if rows else None
    removed: Dict[int, int] = {}
    if all_rows is not None:
        all_rows, group = _sorted_with_groups(all_rows)  # buckets hold disjoint keys: one group per key
        removed = _decide(all_rows, group, exact, near)
    docs = np.fromiter(removed.keys(), np.uint64, len(removed))
    codes = np.fromiter(removed.values(), np.uint8, len(removed))
    order = np.argsort(docs)
    docs, codes = docs[order], codes[order]
    bounds = np.cumsum([0, *candidates]).astype(np.uint64)
    kept, counts = [], {"dedup_exact": 0, "dedup_near": 0}
    for task in range(len(candidates)):
        lo, hi = np.searchsorted(docs, bounds[task]), np.searchsorted(docs, bounds[task + 1])
        mine = np.empty(hi - lo, REMOVED_DTYPE)
        mine["candidate"], mine["code"] = docs[lo:hi] - bounds[task], codes[lo:hi]
        np.save(out / removed_file(task), mine)
        kept.append(int(candidates[task] - (hi - lo)))
    for code in codes.tolist():
        counts[CODES[code]] += 1
    return {"kept_per_task": kept, "candidates_per_task": list(candidates), "removed": counts,
            "documents_in_postings": int(len(np.unique(all_rows["doc"]))) if all_rows is not None else 0}


def _sorted_with_groups(rows: np.ndarray):
    order = np.lexsort((rows["doc"], rows["key"], rows["kind"]))
    rows = rows[order]
    starts = np.concatenate(([True], (rows["kind"][1:] != rows["kind"][:-1]) | (rows["key"][1:] != rows["key"][:-1])))
    return rows, np.cumsum(starts) - 1


def _decide(rows: np.ndarray, group: np.ndarray, exact: bool, near: bool) -> Dict[int, int]:
    """{global candidate: code} of the removed documents among those in `rows`."""
    by_doc = np.argsort(rows["doc"], kind="stable")
    docs, kinds, groups = rows["doc"][by_doc], rows["kind"][by_doc], group[by_doc]
    starts = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))
    ends = np.append(starts[1:], len(docs))
    claimed = np.zeros(int(group.max()) + 1 if len(group) else 0, dtype=bool)  # held by a kept document
    removed: Dict[int, int] = {}
    doc_list, kind_list, group_list = docs.tolist(), kinds.tolist(), groups.tolist()
    for a, z in zip(starts.tolist(), ends.tolist()):
        mine = group_list[a:z]
        kinds_here = kind_list[a:z]
        if exact and any(claimed[g] for g, k in zip(mine, kinds_here) if k == EXACT):
            removed[doc_list[a]] = 1
        elif near and any(claimed[g] for g, k in zip(mine, kinds_here) if k == BAND):
            removed[doc_list[a]] = 2
        else:
            claimed[mine] = True
    return removed
