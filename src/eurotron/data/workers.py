"""Batches of raw records through the prepare stage, in worker processes, results in corpus order.

``num_workers=0`` runs the stage in this process. With N > 0 workers (started with "spawn": no
inherited threads or locks), at most 2N + 2 batches are in flight, so memory stays bounded however
long the corpus is; results come back in submission order, so everything downstream (dedup,
shards, the report) is the same for any number of workers. A worker's exception (a bad record under
``bad_records=fail``) is raised here when its batch's turn comes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

from .filters.stage import BatchResult, Stage, StageSettings

# A batch is at most this many records or this many bytes of text.
BATCH_RECORDS = 1024
BATCH_BYTES = 8_000_000

Rows = List[Tuple[str, Any]]

_STAGE: Optional[Stage] = None


def _init_worker(settings: StageSettings) -> None:
    global _STAGE
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # Hugging Face tokenizers: one thread per worker
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _STAGE = Stage(settings)


def _run(rows: Rows) -> BatchResult:
    assert _STAGE is not None
    return _STAGE.process(rows)


def batches(rows: Iterable[Tuple[str, Any]], text_field: str, max_records: int = BATCH_RECORDS,
            max_bytes: int = BATCH_BYTES) -> Iterator[Rows]:
    batch: Rows = []
    size = 0
    for where, raw in rows:
        batch.append((where, raw))
        if isinstance(raw, (bytes, bytearray)):
            size += len(raw)
        elif isinstance(raw, dict) and isinstance(raw.get(text_field), str):
            size += len(raw[text_field])
        if len(batch) >= max_records or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class StagePool:
    """`map(batches)` → BatchResults in order; a context manager that always stops its workers."""

    def __init__(self, settings: StageSettings, num_workers: int) -> None:
        self.num_workers = num_workers
        self._pool = None
        self._stage: Optional[Stage] = None
        if num_workers <= 0:
            self._stage = Stage(settings)
        else:
            settings.encode_threads = 1
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(num_workers, initializer=_init_worker, initargs=(settings,))

    def map(self, items: Iterable[Rows]) -> Iterator[Tuple[int, BatchResult]]:
        """(records in the batch, result) per batch, in order."""
        if self._stage is not None:
            for rows in items:
                yield len(rows), self._stage.process(rows)
            return
        pending: deque = deque()
        ahead = 2 * self.num_workers + 2
        iterator = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < ahead:
                rows = next(iterator, None)
                if rows is None:
                    exhausted = True
                    break
                pending.append((len(rows), self._pool.apply_async(_run, (rows,))))
            if not pending:
                return
            count, future = pending.popleft()
            yield count, future.get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "StagePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_stage(settings: StageSettings, rows: Iterable[Tuple[str, Any]], num_workers: int) -> Iterator[Tuple[int, BatchResult]]:
    """All batches of `rows` through the stage; the workers stop when the iteration ends or stops."""
    with StagePool(settings, num_workers) as pool:
        yield from pool.map(batches(rows, settings.text_field))


__all__: Sequence[str] = ("StagePool", "run_stage", "batches", "BATCH_RECORDS", "BATCH_BYTES")
