"""The tokenizer task and stage 3 (one task per slice): the slice read again through the prepare
stage, with stage 2's decisions in place of a `Deduplicator`, exactly as pass 1 / pass 2 of the
one-process prepare consume it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...config import PrepareConfig
from ..errors import DataError
from ..filters.report import ReportBuilder
from ..filters.stage import BatchResult, StageSettings
from ..manifest import TOKENIZER_DIR
from ..prepare import build_tokenizer, stage_settings
from ..readers import iter_file_rows
from ..split_writer import SplitWriter
from ..tokenizer import Tokenizer
from ..workers import run_stage
from .dedup import CODES, REMOVED_DTYPE

STATE_FILE = "state.pkl"


def codes_for(removed: np.ndarray, candidates: int) -> np.ndarray:
    """uint8 per candidate of a slice: 0 kept, else the index of its reason in `dedup.CODES`."""
    assert removed.dtype == REMOVED_DTYPE
    codes = np.zeros(candidates, np.uint8)
    codes[removed["candidate"].astype(np.int64)] = removed["code"]
    return codes


def decided_slice(cfg: PrepareConfig, settings: StageSettings, files: Sequence[str], codes: np.ndarray,
                  num_workers: int, task: int) -> Iterator[Tuple[BatchResult, List[Optional[str]]]]:
    """(stage result, verdict per candidate) over one slice, in order; the slice must give the same
    candidates as when the filter task read it."""
    seen = 0
    for _, result in run_stage(settings, iter_file_rows(cfg.source, [Path(f) for f in files]), num_workers):
        n = len(result.candidates)
        if seen + n > len(codes):
            break
        yield result, [CODES[c] for c in codes[seen:seen + n].tolist()]
        seen += n
    if seen != len(codes):
        raise DataError(f"slice {task} ({len(files)} file(s): {', '.join(files[:3])} ...) now gives a different "
                        f"number of documents than the filter task counted ({len(codes)}): the input changed "
                        f"while being prepared. Delete the work directory and start again")


def run_tokenizer(cfg: PrepareConfig, slices: List[List[str]], codes: List[np.ndarray], out: Path,
                  num_workers: int) -> Dict[str, Any]:
    settings = stage_settings(cfg)
    settings.dedup_keys = False  # decided by stage 2

    def batches():  # the slices in order = the corpus in order; training stops at max_training_chars
        for task, files in enumerate(slices):
            yield from decided_slice(cfg, settings, files, codes[task], num_workers, task)

    tokenizer = build_tokenizer(cfg, settings, out / TOKENIZER_DIR, progress=False, batches=batches)
    return {"training_chars": tokenizer.training_chars, "vocab_size": tokenizer.vocab_size}


def run_tokenize(cfg: PrepareConfig, files: List[str], codes: np.ndarray, kept_before: int, tokenizer_dir: Path,
                 task: int, out: Path, num_workers: int) -> Dict[str, Any]:
    settings = stage_settings(cfg)
    settings.tokenizer_dir = str(tokenizer_dir)
    settings.dedup_keys = False  # decided by stage 2
    settings.encode_threads = 1  # a task has its own cores (cpus_per_task), as a worker process has
    vocab_size = Tokenizer.load(tokenizer_dir).vocab_size
    report = ReportBuilder({})  # the merge task's builder holds the header
    writer = SplitWriter(out, cfg.eval_every_nth_document, vocab_size, cfg.shard_tokens, report,
                         kept_before=kept_before, prefix=f"_t{task:05d}")
    for result, verdicts in decided_slice(cfg, settings, files, codes, num_workers, task):
        writer.add(result, verdicts)
    shards = writer.close()
    with open(out / STATE_FILE, "wb") as handle:
        pickle.dump({"shards": shards, "counts": writer.counts, "report": report}, handle)
    return {"kept": writer.counts.kept, "docs": writer.counts.docs,
            "tokens": {name: sum(s["tokens"] for s in entries) for name, entries in shards.items()}}
