"""Per-file checksums of a checkpoint: written before the step directory is renamed into place,
verified before anything is loaded from it.

``checksums.json`` in the step directory maps every file (relative path) to its size and sha256.
sha256 runs at ~1.1 GB/s per core on this project's CPUs (OpenSSL's SHA extensions), faster than
blake2b (0.6 GB/s) here, so the strong hash costs about as much as writing the bytes once; each rank
hashes the files it wrote, and verification splits the files over the ranks.
A checkpoint written before manifests existed still loads, with one warning per process.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch.distributed as dist

from .checkpoint_errors import CorruptCheckpointError

MANIFEST = "checksums.json"
ALGORITHM = "sha256"
_CHUNK = 8 * 2**20  # hash in chunks: memory stays flat whatever the shard size
_warned_no_manifest = False


def hash_file(path: Path) -> Dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, ALGORITHM: digest.hexdigest()}


def hash_files(root: Path, relative: Iterable[str]) -> Dict[str, Dict[str, object]]:
    return {name: hash_file(root / name) for name in relative}


def files_under(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: Path, known: Dict[str, Dict[str, object]]) -> None:
    """Write the manifest of ``step_dir``; ``known`` holds the entries other ranks already hashed, every
    other file is hashed here."""
    entries = dict(known)
    entries.update(hash_files(step_dir, [f for f in files_under(step_dir) if f not in entries]))
    (step_dir / MANIFEST).write_text(json.dumps({"algorithm": ALGORITHM, "files": entries}, indent=1) + "\n")


def read_manifest(step_dir: Path) -> Optional[Dict[str, Dict[str, object]]]:
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        assert data.get("algorithm") == ALGORITHM and isinstance(files, dict)
    except Exception as err:  # noqa: BLE001 - any damage to the manifest is the same finding
        raise CorruptCheckpointError(f"{path} is unreadable ({type(err).__name__}); the checkpoint cannot be "
                                     f"verified: use an earlier step") from None
    return files


def check_file(step_dir: Path, name: str, expected: Dict[str, object]) -> Optional[str]:
    """None when the file matches its manifest entry, else what is wrong with it."""
    path = step_dir / name
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != expected["size"]:
        how = "truncated" if size < expected["size"] else "longer than written"
        return f"{path} is {how} ({size} bytes, the manifest says {expected['size']})"
    if hash_file(path)[ALGORITHM] != expected[ALGORITHM]:
        return f"{path} is corrupted (its {ALGORITHM} differs from the one recorded when it was written)"
    return None


def _gather(items: List[str]) -> List[str]:
    """Every rank's findings on every rank, so all ranks take the same decision."""
    if not dist.is_initialized():
        return items
    gathered: List[Optional[List[str]]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return sorted({x for part in gathered for x in (part or [])})


def verify_checkpoint(step_dir: Path, collective: bool = True) -> bool:
    """Raise CorruptCheckpointError naming the first bad file; False when there is no manifest (an old
    checkpoint: warned once). Collective under a process group unless ``collective=False``: each rank
    hashes a share of the files and every rank sees every finding."""
    together = collective and dist.is_initialized()
    step_dir = Path(step_dir)
    try:
        files = read_manifest(step_dir)
        problems: List[str] = []
    except CorruptCheckpointError as err:
        files, problems = {}, [str(err)]
    if files is None:
        _warn_no_manifest(step_dir)
        if together:
            _gather([])  # keep the collective sequence the same on every rank
        return False
    names = sorted(files)
    rank, world = (dist.get_rank(), dist.get_world_size()) if together else (0, 1)
    for name in names[rank::world]:
        found = check_file(step_dir, name, files[name])
        if found:
            problems.append(found)
    problems = _gather(problems) if together else problems
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise CorruptCheckpointError(f"{problems[0]}{more}")
    return True


def _warn_no_manifest(step_dir: Path) -> None:
    global _warned_no_manifest
    if _warned_no_manifest or (dist.is_initialized() and dist.get_rank() != 0):
        return
    _warned_no_manifest = True
    print(f"eurotron: warning: {step_dir} has no {MANIFEST} (written by an older eurotron); loading it "
          f"without verifying its files", file=sys.stderr, flush=True)
