"""What "the same dataset" means for a staged and a one-process prepare of the same input.

Equal: the tokenizer (model checksum), the manifest's documents (read, kept, skipped per kind,
removed, languages) and per split its document and token counts, the report's every figure
(report.json without ``created``, ``output_dir`` and ``timing``), and per split the token sequence
of every document, in order, read through the loader (`TokenDataset`). Allowed to differ: how those
documents are cut into shard files (names, documents per shard, checksums) and timings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from ..loader import TokenDataset
from ..manifest import read_manifest

VOLATILE = ("created", "output_dir", "timing")


def _report(path: Path) -> Dict[str, Any]:
    report = json.loads((path / "report.json").read_text())
    return {k: v for k, v in report.items() if k not in VOLATILE}


def _documents(path: Path, split: str) -> List[bytes]:
    data = TokenDataset(path, split)
    return [data.doc(i).tobytes() for i in range(data.num_docs)]


def dataset_differences(one: Path | str, other: Path | str) -> List[str]:
    """What differs between two prepared datasets, in the sense above ([] when they are the same)."""
    a, b = Path(one), Path(other)
    ma, mb = read_manifest(a), read_manifest(b)
    problems = []
    for key in ("documents", "tokenizer", "dtype", "eval_every_nth_document", "source"):
        if ma.get(key) != mb.get(key):
            problems.append(f"manifest {key}: {ma.get(key)} != {mb.get(key)}")
    counts = {name: (s["docs"], s["tokens"]) for name, s in ma["splits"].items()}
    other_counts = {name: (s["docs"], s["tokens"]) for name, s in mb["splits"].items()}
    if counts != other_counts:
        problems.append(f"splits (docs, tokens): {counts} != {other_counts}")
    ra, rb = _report(a), _report(b)
    for key in sorted(set(ra) | set(rb)):
        if ra.get(key) != rb.get(key):
            problems.append(f"report.json {key}: {ra.get(key)} != {rb.get(key)}")
    for split in set(ma["splits"]) & set(mb["splits"]):
        da, db = _documents(a, split), _documents(b, split)
        if da != db:
            first = next((i for i, (x, y) in enumerate(zip(da, db)) if x != y), min(len(da), len(db)))
            problems.append(f"{split}: token sequences differ from document {first} ({len(da)} vs {len(db)} documents)")
    return problems
