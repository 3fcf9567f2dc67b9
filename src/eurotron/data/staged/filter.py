"""Stage 1, one task per slice: the prepare stage without a tokenizer over the slice's files (parse,
domain lists, opt-out, PII, dedup keys), keeping only the keys (bucketed for the dedup tasks) and
the counts the later stages check against."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ...config import PrepareConfig
from ..prepare import stage_settings
from ..readers import iter_file_rows
from ..workers import run_stage
from .keys import ROW, key_rows, write_buckets


def run_filter(cfg: PrepareConfig, files: List[str], out: Path, num_workers: int) -> Dict[str, Any]:
    settings = stage_settings(cfg)
    d = cfg.filters.dedup
    exact, near = cfg.filters.enabled and d.exact, cfg.filters.enabled and d.near
    kinds: Counter = Counter()
    parts, candidates = [], 0
    for _, result in run_stage(settings, iter_file_rows(cfg.source, [Path(f) for f in files]), num_workers):
        kinds.update(result.kinds)
        parts.append(key_rows(result.keys, candidates, exact, near))
        candidates += len(result.candidates)
    write_buckets(out, np.concatenate(parts) if parts else np.empty(0, ROW), cfg.staged.dedup_tasks)
    return {"records": sum(kinds.values()), "candidates": candidates, "kinds": dict(kinds)}
