"""Integrity of a prepared dataset's shards when it opens: sizes, checksums, token-id range.

Three checks, from cheap to expensive:

* **sizes, always** (stat only): each ``.bin`` must hold ``tokens x itemsize`` bytes and each ``.idx``
  ``32 + 8 x (docs + 1)``, as the manifest's counts say. Every missing or truncated file of the split
  is named in one error.
* **token ids, always, once**: the largest id must be below the tokenizer's vocabulary (else the
  embedding lookup fails at step 1). eurotron-prepare records ``max_token_id`` per shard in the
  manifest, so opening costs a read of the first and last page of each ``.bin`` (a spot check that
  they agree with the manifest). Datasets prepared before that field existed are scanned once (numpy
  max over the memmap in blocks) and the result cached in a stamp keyed by the files' size and mtime.
* **sha256, on request** (``data.verify_checksums=true``): both files hashed against the manifest
  once; the stamp records the success, so later opens of unchanged files skip the hashing.

Stamps live in ``<dataset>/.eurotron_stamps/`` (or, when the dataset directory is read-only, under
``~/.cache/eurotron/stamps/``). A stamp is only trusted while size and mtime_ns of both files are
unchanged; anything that rewrites a shard invalidates it. Concurrent ranks serialise on a lock file
per shard, so one of them does the scan and the others read its stamp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from .errors import DataError, ShardError
from .shards import HEADER, REPAIR, ShardReader

STAMP_DIR = ".eurotron_stamps"
SCAN_TOKENS = 1 << 24  # tokens per block of the max scan (32-64 MiB)
SPOT_TOKENS = 2048  # tokens read at each end of a .bin to spot-check a recorded max (a page or two)
HASH_BYTES = 1 << 24


# ------------------------------------------------------------------------------------------ sizes
def expected_sizes(entry: Mapping[str, Any]) -> Optional[tuple]:
    """(.bin bytes, .idx bytes) the manifest entry implies; None for an entry without counts."""
    if not all(key in entry for key in ("tokens", "docs", "dtype")):
        return None
    itemsize = np.dtype(entry["dtype"]).itemsize
    return int(entry["tokens"]) * itemsize, HEADER.size + 8 * (int(entry["docs"]) + 1)


def check_sizes(split_dir: Path, entries: Sequence[Mapping[str, Any]]) -> None:
    """Stat every shard file of a split; one error naming each missing or wrongly sized file."""
    problems: List[str] = []
    for entry in entries:
        sizes = expected_sizes(entry)
        for suffix, want in zip((".bin", ".idx"), sizes or (None, None)):
            file = split_dir / f"{entry['name']}{suffix}"
            try:
                have = file.stat().st_size
            except FileNotFoundError:
                problems.append(f"{file} is missing")
                continue
            if want is not None and have != want:
                what = "truncated" if have < want else "longer than written"
                problems.append(f"{file} is {have:,} bytes, the manifest implies {want:,} ({what})")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ShardError(f"the dataset's shards do not match {split_dir.parent / 'manifest.json'}:\n  "
                         + "\n  ".join(shown) + f"\n{REPAIR}")


# ------------------------------------------------------------------------------------------ stamps
def _stamp_root(dataset: Path) -> Path:
    root = dataset / STAMP_DIR
    if os.access(root if root.is_dir() else dataset, os.W_OK):
        return root
    # A read-only dataset (e.g. a project's shared copy): cache per user instead.
    key = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eurotron" / "stamps" / key
    return cache


def _file_key(path: Path) -> Dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Stamp:
    """What earlier opens learnt about one shard, valid while its files keep their size and mtime."""

    def __init__(self, dataset: Path, split: str, shard: ShardReader) -> None:
        self.file = _stamp_root(dataset) / f"{split}__{shard.bin_path.stem}.json"
        self.key = {"bin": _file_key(shard.bin_path), "idx": _file_key(shard.idx_path)}
        self.facts: Dict[str, Any] = {}
        self._load()

    def _load(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(self.file.read_text())
            if saved.get("key") == self.key:
                self.facts.update(saved.get("facts", {}))

    def save(self, **facts: Any) -> None:
        """Record facts (best effort: a dataset we cannot cache for is checked again next time)."""
        self.facts.update(facts)
        with contextlib.suppress(OSError):
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": self.key, "facts": self.facts}))
            os.replace(tmp, self.file)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise the ranks that open this shard at once, so one scans and the rest reuse its stamp."""
        try:
            import fcntl

            self.file.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.file.with_suffix(".lock"), "a")
        except (ImportError, OSError):
            yield
            return
        with handle:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_EX)
            self._load()  # another rank may have finished the work while we waited
            yield


# ------------------------------------------------------------------------------------ checks
def _scan_max(tokens: np.ndarray) -> int:
    best = -1
    for start in range(0, len(tokens), SCAN_TOKENS):
        best = max(best, int(tokens[start:start + SCAN_TOKENS].max()))
    return best


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BYTES):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(shard: ShardReader, entry: Mapping[str, Any], stamp: Stamp) -> None:
    """sha256 of both files against the manifest, unless a stamp says these very files passed."""
    if stamp.facts.get("sha256_ok"):
        return
    with stamp.locked():
        if stamp.facts.get("sha256_ok"):
            return
        for file, key in ((shard.bin_path, "sha256_bin"), (shard.idx_path, "sha256_idx")):
            if key in entry and _sha256(file) != entry[key]:
                raise ShardError(f"{file} does not match its manifest checksum ({key}): the file changed after "
                                 f"eurotron-prepare wrote it; {REPAIR}")
        stamp.save(sha256_ok=True)


def shard_max_id(shard: ShardReader, entry: Mapping[str, Any], stamp: Stamp) -> int:
    """The largest token id in `shard` (-1 when empty), as cheaply as the manifest and stamp allow."""
    tokens = shard.tokens(0, shard.num_tokens)
    if not len(tokens):
        return -1
    recorded = entry.get("max_token_id")
    if recorded is not None:
        # A spot check of both ends: a .bin replaced by another tokenizer's output shows here.
        ends = max(int(tokens[:SPOT_TOKENS].max()), int(tokens[-SPOT_TOKENS:].max()))
        return max(int(recorded), ends)
    if "max_token_id" in stamp.facts:
        return int(stamp.facts["max_token_id"])
    with stamp.locked():
        if "max_token_id" not in stamp.facts:
            stamp.save(max_token_id=_scan_max(tokens))
    return int(stamp.facts["max_token_id"])


def check_shards(dataset: Path, split: str, shards: Sequence[ShardReader], entries: Sequence[Mapping[str, Any]],
                 vocab_size: int, verify: bool) -> int:
    """Checksums (when `verify`) and the id range of every shard; returns the split's largest id."""
    largest = -1
    for shard, entry in zip(shards, entries):
        stamp = Stamp(dataset, split, shard)
        if verify:
            verify_checksums(shard, entry, stamp)
        top = shard_max_id(shard, entry, stamp)
        if top >= vocab_size:
            raise DataError(
                f"{shard.bin_path} holds token id {top}, but the dataset's tokenizer has a vocabulary of "
                f"{vocab_size} (ids 0..{vocab_size - 1}): the shard was written with another tokenizer or is "
                f"corrupt; {REPAIR}"
            )
        largest = max(largest, top)
    return largest
