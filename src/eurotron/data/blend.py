"""Blending: one training stream drawn from several prepared datasets by weight (Megatron-style).

Each source is prepared separately (its own eurotron-prepare run, its own report); all share one
tokenizer. Global sample ``s`` of the blend is sample ``j`` of source ``d``, a pure function of
``s``, the weights and the seed — so the stream is deterministic, and resuming from
``consumed_samples`` (the loader's only state) continues it exactly, in any data-parallel layout.

How ``s`` maps to ``(d, j)``: the blend is cut into chunks of ``C`` samples. After ``N`` samples
source ``d`` has had exactly ``floor(W_d N) - floor(W_{d-1} N)`` of them (``W`` the cumulative
normalised weights), so every prefix of the stream matches the weights to within one sample per
source at chunk ends; inside a chunk, the samples of each source are spread evenly (the ``i``-th
of ``n_d`` sits at ``(i + 1/2) / n_d`` of the chunk) like Megatron's greedy blending index. Only the
chunks in use are computed (O(C) memory). ``C`` is large enough that each source gets at least two
samples per chunk, so counts never go backwards.

Source ``d`` is read through its own `GlobalSampler` (document and sample shuffling per epoch),
seeded ``seed + 1000003 * d``: a one-source blend is the plain loader's stream.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np

from .errors import DataError
from .loader import GlobalSampler, TokenDataset, check_model_vocab

CHUNK = 4096
SEED_STRIDE = 1_000_003


class BlendIndex:
    """Global blended sample index → (source, index within the source)."""

    CACHED_CHUNKS = 4

    def __init__(self, weights: Sequence[float]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise DataError(f"blend weights {list(weights)} must be positive, finite numbers")
        self.weights = w / w.sum()
        self.cumulative = np.cumsum(self.weights)
        self.cumulative[-1] = 1.0
        self.chunk = max(CHUNK, math.ceil(3.0 / float(self.weights.min())))
        self._chunks: "OrderedDict[int, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()

    def counts_before(self, n: int) -> np.ndarray:
        """Samples each source has given in the first `n` samples of the blend."""
        upto = np.floor(self.cumulative * n).astype(np.int64)
        upto[-1] = n
        return np.diff(np.concatenate(([0], upto)))

    def _chunk(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        cached = self._chunks.get(k)
        if cached is not None:
            self._chunks.move_to_end(k)
            return cached
        start = self.counts_before(k * self.chunk)
        per_source = self.counts_before((k + 1) * self.chunk) - start
        sources = np.repeat(np.arange(len(per_source)), per_source)
        rank = np.concatenate([np.arange(n) for n in per_source])
        when = (rank + 0.5) / per_source[sources]
        order = np.lexsort((sources, when))
        result = (sources[order].astype(np.int32), (start[sources] + rank)[order].astype(np.int64))
        self._chunks[k] = result
        while len(self._chunks) > self.CACHED_CHUNKS:
            self._chunks.popitem(last=False)
        return result

    def lookup(self, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        sources = np.empty(len(indices), dtype=np.int32)
        local = np.empty(len(indices), dtype=np.int64)
        chunks = indices // self.chunk
        for k in np.unique(chunks):
            rows = np.nonzero(chunks == k)[0]
            chunk_sources, chunk_local = self._chunk(int(k))
            offsets = indices[rows] - int(k) * self.chunk
            sources[rows], local[rows] = chunk_sources[offsets], chunk_local[offsets]
        return sources, local


class BlendedSampler:
    """The `GlobalSampler` interface over a blend: `samples(indices)` and `samples_per_epoch`."""

    def __init__(self, datasets: Sequence[TokenDataset], weights: Sequence[float], seq_len: int, seed: int,
                 shuffle: bool) -> None:
        self.index = BlendIndex(weights)
        self.seq_len = seq_len
        self.samplers = [GlobalSampler(ds, seq_len, seed + SEED_STRIDE * d, shuffle) for d, ds in enumerate(datasets)]
        # One "epoch" of the blend: as many samples as the sources hold together.
        self.samples_per_epoch = sum(s.samples_per_epoch for s in self.samplers)

    def samples(self, indices: np.ndarray) -> np.ndarray:
        sources, local = self.index.lookup(indices)
        out = np.empty((len(sources), self.seq_len + 1), dtype=np.int64)
        for d in np.unique(sources):
            rows = np.nonzero(sources == d)[0]
            out[rows] = self.samplers[int(d)].samples(local[rows])
        return out


class BlendedDataset:
    """Several prepared datasets as one training dataset for `BatchLoader` (which asks it for its
    sampler); the tokenizer, EOS id and vocabulary are the sources' common ones."""

    def __init__(self, sources: Sequence[Tuple[Any, float]], split: str = "train", verify: bool = False) -> None:
        if not sources:
            raise DataError("data.blend is empty: list at least one {path, weight}")
        self.datasets = [TokenDataset(path, split, verify=verify) for path, _ in sources]
        self.weights = [float(weight) for _, weight in sources]
        BlendIndex(self.weights)  # validates the weights
        first = self.datasets[0]
        for ds in self.datasets[1:]:
            check_same_tokenizer(first, ds)
        self.split = split
        self.path = first.path
        self.vocab_size, self.eos_id = first.vocab_size, first.eos_id
        self.max_token_id = max(ds.max_token_id for ds in self.datasets)

    def check_vocab(self, model_vocab_size: int) -> None:
        for ds in self.datasets:  # names the source that holds the offending id
            check_model_vocab(ds, model_vocab_size)

    @property
    def tokenizer_dir(self) -> Path:
        return self.datasets[0].tokenizer_dir

    @property
    def num_tokens(self) -> int:
        return sum(ds.num_tokens for ds in self.datasets)

    @property
    def num_docs(self) -> int:
        return sum(ds.num_docs for ds in self.datasets)

    def has_split(self, split: str) -> bool:
        return all(ds.has_split(split) for ds in self.datasets)

    def make_sampler(self, seq_len: int, seed: int, shuffle: bool) -> BlendedSampler:
        return BlendedSampler(self.datasets, self.weights, seq_len, seed, shuffle)


def check_same_tokenizer(a: TokenDataset, b: TokenDataset) -> None:
    ta, tb = a.manifest["tokenizer"], b.manifest["tokenizer"]
    same = (ta.get("sha256") and ta.get("sha256") == tb.get("sha256")) and ta["vocab_size"] == tb["vocab_size"] \
        and ta["eos_id"] == tb["eos_id"]
    if not same:
        raise DataError(
            f"{b.path} was tokenized with another tokenizer than {a.path} (sha256 {tb.get('sha256')} vs "
            f"{ta.get('sha256')}); blended sources must share one: prepare them with "
            f"tokenizer.path={a.tokenizer_dir}"
        )


def open_train_dataset(data: Any, split: str = "train") -> Any:
    """The training dataset a `DataConfig` describes: data.path alone, or the blend of data.blend
    (whose tokenizer must be data.path's, since the run's eval split and tokenizer come from there)."""
    verify = bool(getattr(data, "verify_checksums", False))
    if not data.blend:
        return TokenDataset(data.path, split, verify=verify)
    blended = BlendedDataset([(b.path, b.weight) for b in data.blend], split, verify=verify)
    check_same_tokenizer(TokenDataset(data.path, split, verify=verify), blended.datasets[0])
    return blended


__all__: List[str] = ["BlendIndex", "BlendedSampler", "BlendedDataset", "open_train_dataset"]
