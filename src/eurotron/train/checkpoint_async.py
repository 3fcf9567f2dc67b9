"""Writing a checkpoint's shards and committing it, synchronously or in the background.

One path for both modes. Each rank writes its DCP shards (``dcp.save``, or ``dcp.async_save``: a copy
to host memory, then the write in a background thread), hashes the files it wrote and leaves a small
per-rank note in the temporary directory (its checksums, or its error). Rank 0 then merges the notes
into checksums.json, renames the directory into place, updates `latest` and prunes: only after every
rank's write finished, so a crash at any point leaves the previous `latest`. Rank 0 commits without
collectives (it waits for the other ranks' notes on the file system), so the commit can run in the
background thread; ``wait`` (called by the next save and before the trainer exits) joins it and lets
all ranks agree on the outcome.

DCP's async save runs its own collectives (planning, the final metadata) from the background thread;
under a process group they go over a dedicated gloo group, so they never interleave with the
training's collectives on the default group (async_save also needs a CPU backend for them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .checkpoint_errors import CheckpointError
from .checkpoint_integrity import hash_files, write_manifest
from .checkpoint_retention import LATEST, latest_name, prune

NOTE_PREFIX = ".rank_note_"
NOTE_TIMEOUT_S = 3600.0  # backstop: DCP's metadata is written only after every rank's data, so notes follow


@dataclass
class PendingSave:
    step: int
    tmp: Path
    final: Path
    background: Optional[Future] = None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rank_world() -> tuple:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class SaveWriter:
    def __init__(self, root: Path, keep_last: int, async_save: bool,
                 on_commit: Optional[Callable[[int, Path], None]] = None) -> None:
        self.root, self.keep_last, self.async_save = Path(root), keep_last, async_save
        # Rank 0, after `latest` names a new checkpoint and before pruning (hf_export.HFExporter.committed).
        self.on_commit = on_commit
        self._pending: Optional[PendingSave] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        # A gloo group of its own for DCP's background collectives (created collectively, once).
        self._group = dist.new_group(backend="gloo") if async_save and dist.is_initialized() else None

    def start(self, pending: PendingSave, state: Dict[str, Any], shards_dir: str) -> None:
        """Write ``state``'s shards into ``pending.tmp``; synchronous saves are committed before returning.
        A rank's failure is written as its note (so rank 0 never waits for it) and raised by ``wait``."""
        shards = str(pending.tmp / shards_dir)
        self._pending = pending
        try:
            if self.async_save:
                upload = dcp.async_save(state, checkpoint_id=shards, process_group=self._group)
            else:
                dcp.save(state, checkpoint_id=shards)
                upload = None
        except Exception as err:  # noqa: BLE001 - reported to every rank by wait()
            upload = _failed(err)
        if self.async_save:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eurotron-checkpoint")
            pending.background = self._executor.submit(self._finish_write, pending, upload)
            return
        try:
            self._finish_write(pending, upload)
        except Exception as err:  # noqa: BLE001 - reported to every rank by wait()
            pending.background = _failed(err)
        self.wait()

    def _finish_write(self, pending: PendingSave, upload: Optional[Future]) -> None:
        rank, world = _rank_world()
        note = pending.tmp / f"{NOTE_PREFIX}{rank:05d}.json"
        try:
            if upload is not None:
                upload.result()
            own = [f"rng/rank_{rank}.pt"] + sorted(
                str(p.relative_to(pending.tmp)) for p in pending.tmp.glob(f"*/__{rank}_*.distcp"))
            write_text_atomic(note, json.dumps({"files": hash_files(pending.tmp, own)}))
        except Exception as err:
            write_text_atomic(note, json.dumps({"error": f"rank {rank}: {type(err).__name__}: {err}"}))
            raise
        if rank == 0:
            self._commit(pending, world)

    def _commit(self, pending: PendingSave, world: int) -> None:
        """Rank 0: merge every rank's checksums, write the manifest, rename into place, `latest`, prune."""
        known: Dict[str, Any] = {}
        for rank in range(world):
            note = pending.tmp / f"{NOTE_PREFIX}{rank:05d}.json"
            deadline = time.monotonic() + NOTE_TIMEOUT_S
            while not note.exists():
                if time.monotonic() > deadline:
                    raise CheckpointError(f"rank {rank} never finished writing {pending.tmp}")
                time.sleep(0.05)
            content = json.loads(note.read_text())
            if "error" in content:
                raise CheckpointError(content["error"])
            known.update(content["files"])
        for note in pending.tmp.glob(f"{NOTE_PREFIX}*"):
            note.unlink()
        write_manifest(pending.tmp, known)
        if pending.final.exists():
            shutil.rmtree(pending.final)
        os.replace(pending.tmp, pending.final)
        write_text_atomic(self.root / LATEST, pending.final.name + "\n")
        if self.on_commit is not None:
            self.on_commit(pending.step, pending.final)
        prune(self.root, self.keep_last)

    def wait(self) -> Optional[Path]:
        """Join the save in flight; all ranks raise the same CheckpointError if any rank failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        error: Optional[str] = None
        try:
            if pending.background is not None:
                pending.background.result()
        except Exception as err:  # noqa: BLE001 - turned into one agreed error below
            error = str(err) if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}"
        errors = _gather(error)
        if errors:
            if _rank_world()[0] == 0:
                shutil.rmtree(pending.tmp, ignore_errors=True)  # never leave a half-written directory
            raise CheckpointError(
                f"checkpoint {pending.final} was not written ({errors[0]}); `latest` still names "
                f"{latest_name(self.root) or 'no checkpoint'}"
            )
        return pending.final


def _failed(err: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(err)
    return future


def _gather(item: Optional[str]) -> List[str]:
    if not dist.is_initialized():
        return [item] if item else []
    gathered: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, item)
    return [g for g in gathered if g]
