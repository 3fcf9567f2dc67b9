"""Packed token shards: ``<name>.bin`` holds the tokens, ``<name>.idx`` where each document starts.

``.bin``: the raw tokens of all documents back to back (each document ends with EOS), as
little-endian uint16 when the vocabulary fits (<= 65536 ids), else uint32.

``.idx``: a 32-byte header, then ``num_docs + 1`` little-endian int64 offsets into ``.bin`` (in
tokens; the first is 0, the last is ``num_tokens``)::

    magic b"EUROTKN\\0" | version u32 | dtype code u32 | num_docs u64 | num_tokens u64

`ShardReader` checks all of this on open and maps ``.bin`` with `numpy.memmap`, so opening a shard
costs O(num_docs) and reading a document touches only its own pages.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .errors import ShardError
from .tokenizer import sha256_file

MAGIC = b"EUROTKN\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
REPAIR = "re-run eurotron-prepare (with overwrite=true) to rebuild the dataset"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return DTYPES[1] if vocab_size <= 65536 else DTYPES[2]


def dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


# ------------------------------------------------------------------------------------------ writer
class ShardWriter:
    """Append documents; rolls over to a new shard once one holds at least `shard_tokens` tokens.

    Files are ``<directory>/<prefix>_<00000>.bin/.idx``. A document never spans two shards. Tokens
    are buffered and written in blocks of `flush_tokens`; the SHA-256 of each file is computed as it
    is written, so `close()` returns complete per-shard stats without reading anything back.
    """

    def __init__(self, directory: Path | str, prefix: str, vocab_size: int,
                 shard_tokens: int = 50_000_000, flush_tokens: int = 1 << 20) -> None:
        if shard_tokens <= 0:
            raise ShardError(f"shard_tokens={shard_tokens}: must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.dtype = token_dtype(vocab_size)
        self.max_id = vocab_size - 1
        self._max_seen = -1
        self.shard_tokens = shard_tokens
        self.flush_tokens = flush_tokens
        self.stats: List[Dict[str, Any]] = []
        self._handle = None
        self._closed = False

    # -------------------------------------------------------------------------------- writing
    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one document (its tokens, EOS included)."""
        array = np.asarray(tokens)
        if array.ndim != 1 or array.size == 0:
            raise ShardError(f"a document must be a non-empty 1-D token sequence, got shape {array.shape}")
        self.add_documents(array, [array.size])

    def add_documents(self, tokens: Sequence[int] | np.ndarray, lengths: Sequence[int] | np.ndarray) -> None:
        """Append documents given back to back in `tokens`, `lengths[i]` tokens each (EOS included):
        the same shards as one `add_document` per document, without a Python step per document.
        The writer keeps a view of `tokens` until it flushes: don't modify the array afterwards."""
        array = self._checked(np.asarray(tokens))
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.ndim != 1 or (lengths.size and int(lengths.min()) <= 0) or int(lengths.sum()) != array.size:
            raise ShardError(f"document lengths must be positive and add up to the {array.size} tokens given")
        ends = np.cumsum(lengths)
        done_docs, done_tokens = 0, 0
        while done_docs < len(ends):
            if self._handle is None:
                self._open_next()
            # Documents go into this shard up to and including the one that fills it.
            added = ends[done_docs:] - done_tokens
            take = min(int(np.searchsorted(added, self.shard_tokens - self._tokens)) + 1, len(added))
            self._offsets.extend((added[:take] + self._tokens).tolist())
            piece = array[done_tokens:done_tokens + int(added[take - 1])]
            self._buffer.append(piece)
            self._buffered += piece.size
            self._tokens += piece.size
            done_docs, done_tokens = done_docs + take, done_tokens + piece.size
            if self._buffered >= self.flush_tokens:
                self._flush()
            if self._tokens >= self.shard_tokens:
                self._finish_shard()

    def _checked(self, array: np.ndarray) -> np.ndarray:
        if array.ndim != 1:
            raise ShardError(f"tokens must be a 1-D sequence, got shape {array.shape}")
        if array.dtype != self.dtype:
            if array.size and (int(array.min()) < 0 or int(array.max()) > self.max_id):
                raise ShardError(
                    f"token ids must lie in [0, {self.max_id}] (the tokenizer's vocabulary); "
                    f"got {int(array.min())}..{int(array.max())}"
                )
            array = array.astype(self.dtype)
        return array

    def close(self) -> List[Dict[str, Any]]:
        """Finish the open shard; return one stats dict per shard written."""
        if not self._closed:
            if self._handle is not None:
                self._finish_shard()
            self._closed = True
        return self.stats

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------- internal
    def _open_next(self) -> None:
        if self._closed:
            raise ShardError("ShardWriter is closed")
        self._name = f"{self.prefix}_{len(self.stats):05d}"
        self._handle = open(self.directory / f"{self._name}.bin", "wb")
        self._hash = hashlib.sha256()
        self._buffer: List[np.ndarray] = []
        self._buffered = 0
        self._tokens = 0
        self._offsets: List[int] = [0]
        self._max_seen = -1

    def _flush(self) -> None:
        if not self._buffer:
            return
        block = np.concatenate(self._buffer)
        # Recorded in the manifest, so the loader range-checks ids without scanning the shard.
        self._max_seen = max(self._max_seen, int(block.max()))
        if self._max_seen > self.max_id:
            raise ShardError(f"token id {self._max_seen} is outside the tokenizer's vocabulary "
                             f"(ids 0..{self.max_id}); the tokenizer reports a wrong vocab_size")
        data = block.tobytes()
        self._handle.write(data)
        self._hash.update(data)
        self._buffer, self._buffered = [], 0

    def _finish_shard(self) -> None:
        self._flush()
        self._handle.close()
        self._handle = None
        offsets = np.asarray(self._offsets, dtype="<i8")
        header = HEADER.pack(MAGIC, VERSION, DTYPE_CODES[self.dtype], len(offsets) - 1, self._tokens)
        idx = header + offsets.tobytes()
        (self.directory / f"{self._name}.idx").write_bytes(idx)
        self.stats.append({
            "name": self._name,
            "bin": f"{self._name}.bin",
            "idx": f"{self._name}.idx",
            "docs": len(offsets) - 1,
            "tokens": self._tokens,
            "dtype": dtype_name(self.dtype),
            "max_token_id": self._max_seen,
            "sha256_bin": self._hash.hexdigest(),
            "sha256_idx": hashlib.sha256(idx).hexdigest(),
        })


# ------------------------------------------------------------------------------------------ reader
def _shard_paths(path: Path | str) -> tuple[Path, Path]:
    """`path` may name the shard with or without its .bin/.idx suffix."""
    base = Path(path)
    if base.suffix in (".bin", ".idx"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".bin"), base.with_name(base.name + ".idx")


class ShardReader:
    """A validated, memory-mapped view of one shard.

    `expected` is the shard's manifest entry: its counts are checked on open, and its checksums too
    when `verify=True` (which reads both files once).
    """

    def __init__(self, path: Path | str, expected: Optional[Mapping[str, Any]] = None,
                 verify: bool = False) -> None:
        self.bin_path, self.idx_path = _shard_paths(path)
        for file in (self.idx_path, self.bin_path):
            if not file.is_file():
                raise ShardError(f"shard file {file} is missing; {REPAIR}")
        self.num_docs, self.num_tokens, self.dtype = self._read_header()
        self.offsets = self._read_offsets()
        expected_bytes = self.num_tokens * self.dtype.itemsize
        actual_bytes = self.bin_path.stat().st_size
        if actual_bytes != expected_bytes:
            raise ShardError(
                f"{self.bin_path} holds {actual_bytes} bytes but its index {self.idx_path.name} says "
                f"{self.num_tokens} tokens x {self.dtype.itemsize} bytes = {expected_bytes} "
                f"(truncated or overwritten); {REPAIR}"
            )
        if expected is not None:
            self._check_expected(expected, verify)
        if self.num_tokens:
            self._tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        else:
            self._tokens = np.empty(0, dtype=self.dtype)

    def _read_header(self) -> tuple[int, int, np.dtype]:
        with open(self.idx_path, "rb") as handle:
            raw = handle.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise ShardError(f"{self.idx_path} is shorter than its {HEADER.size}-byte header; {REPAIR}")
        magic, version, code, num_docs, num_tokens = HEADER.unpack(raw)
        if magic != MAGIC:
            raise ShardError(f"{self.idx_path} is not a eurotron shard index (bad magic bytes {magic!r}); {REPAIR}")
        if version != VERSION:
            raise ShardError(
                f"{self.idx_path} has shard format version {version}; this eurotron reads version "
                f"{VERSION}. {REPAIR}"
            )
        if code not in DTYPES:
            raise ShardError(f"{self.idx_path} has an unknown token dtype code {code}; {REPAIR}")
        return num_docs, num_tokens, DTYPES[code]

    def _read_offsets(self) -> np.ndarray:
        want = HEADER.size + 8 * (self.num_docs + 1)
        size = self.idx_path.stat().st_size
        if size != want:
            raise ShardError(
                f"{self.idx_path} is {size} bytes; its header ({self.num_docs} documents) needs "
                f"{want} (truncated or corrupt); {REPAIR}"
            )
        # Memory-mapped: the page cache holds them once, however many ranks open the shard.
        offsets = np.memmap(self.idx_path, dtype="<i8", mode="r", offset=HEADER.size, shape=(self.num_docs + 1,))
        if offsets[0] != 0 or offsets[-1] != self.num_tokens or np.any(np.diff(offsets) <= 0):
            raise ShardError(
                f"{self.idx_path} has invalid document offsets (they must rise from 0 to the "
                f"{self.num_tokens} tokens of the header, every document non-empty); {REPAIR}"
            )
        return offsets

    def _check_expected(self, expected: Mapping[str, Any], verify: bool) -> None:
        for key, actual in (("docs", self.num_docs), ("tokens", self.num_tokens)):
            if key in expected and int(expected[key]) != actual:
                raise ShardError(
                    f"{self.idx_path} holds {actual} {key} but the manifest says {expected[key]}; {REPAIR}"
                )
        if not verify:
            return
        for file, key in ((self.bin_path, "sha256_bin"), (self.idx_path, "sha256_idx")):
            if key in expected and sha256_file(file) != expected[key]:
                raise ShardError(
                    f"{file} does not match its manifest checksum ({key}); the file changed after "
                    f"eurotron-prepare wrote it; {REPAIR}"
                )

    # ---------------------------------------------------------------------------------- access
    def doc(self, i: int) -> np.ndarray:
        """Tokens of document `i` (EOS included), as a read-only view."""
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for {self.num_docs} documents in {self.bin_path}")
        i %= self.num_docs
        return self._tokens[self.offsets[i]:self.offsets[i + 1]]

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the shard's token stream, as a read-only view."""
        return self._tokens[start:end]

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.num_docs
