"""The trainer's run directory and checkpoint.resume: up-front checks, the fresh-start policy, and the
checkpoint a resume uses. Only rank 0 touches the file system; every rank takes rank 0's decision.

  auto     resume from `latest` (verified; a corrupt one is skipped for the previous intact one)
  never    start fresh; refused when run_dir already holds checkpoints (they would be pruned)
  restart  move the old run's checkpoints/, metrics.jsonl and loss_curve.png into
           run_dir/previous/<UTC time>/, then start fresh
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import torch.distributed as dist

from ..errors import UserError
from ..parallel.env import barrier, is_main_process
from ..paths import ensure_writable_dir
from .checkpoint_errors import CheckpointError
from .checkpoint_integrity import verify_checkpoint
from .checkpoint_retention import (
    archive_old_run, complete_checkpoints, first_verified, holds_old_run, refuse_fresh_start, resume_candidates,
)

T = TypeVar("T")
CHECKPOINTS = "checkpoints"


def _on_rank0(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 and hand its result, or its UserError, to every rank."""
    box: List[object] = [None]
    if is_main_process():
        try:
            box[0] = ("ok", action())
        except UserError as err:
            box[0] = ("error", err)
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    kind, value = box[0]  # type: ignore[misc]
    if kind == "error":
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def check(run_dir: Path, mode: str) -> None:
    """Before any work: run_dir is writable, and resume=never would not train over old checkpoints."""
    def run() -> None:
        ensure_writable_dir(run_dir, "run_dir")
        if mode == "never":
            refuse_fresh_start(run_dir)
    _on_rank0(run)


def _starts_fresh(run_dir: Path, mode: str) -> bool:
    root = run_dir / CHECKPOINTS
    # never: check() already refused old checkpoints, so only an old metrics.jsonl can be moved here.
    if mode in ("restart", "never"):
        return True
    return not complete_checkpoints(root) and not (root / "latest").exists()


def prepare(run_dir: Path, mode: str) -> Optional[Path]:
    """A fresh start never appends to (or prunes) an earlier run's files: they move to previous/."""
    def run() -> Optional[Path]:
        ensure_writable_dir(run_dir, "run_dir")
        if not _starts_fresh(run_dir, mode) or not holds_old_run(run_dir):
            return None
        moved = archive_old_run(run_dir)
        print(f"eurotron: starting fresh (checkpoint.resume={mode}): moved the previous run's files to {moved}",
              flush=True)
        return moved
    moved = _on_rank0(run)
    barrier()
    return moved


def resumable_checkpoint(run_dir: Path) -> Optional[Path]:
    """`latest`, verified, or the newest earlier checkpoint that verifies (each skipped one is printed).
    Collective: every rank verifies a share of the files and all see the same verdict."""
    root = run_dir / CHECKPOINTS
    candidates, skipped = resume_candidates(root) if is_main_process() else ([], [])
    if dist.is_initialized():
        box = [(candidates, skipped)]
        dist.broadcast_object_list(box, src=0)
        candidates, skipped = box[0]
    if not candidates and not skipped:
        return None

    reasons: List[str] = []

    def report(line: str) -> None:
        reasons.append(line)
        if is_main_process():
            print(f"eurotron: warning: {line}", file=sys.stderr, flush=True)

    for line in skipped:
        report(line)
    found = first_verified(candidates, verify_checkpoint, report)
    if found is None:
        raise CheckpointError(
            f"no intact checkpoint in {root} to resume from ({'; '.join(reasons)}). Restore the files, or "
            f"start over with checkpoint.resume=restart (moves them to {run_dir / 'previous'}/)"
        )
    if reasons and is_main_process():
        print(f"eurotron: resuming from {found.name}, the newest checkpoint that verified", flush=True)
    return found
