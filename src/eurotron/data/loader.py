"""The training data loader: a deterministic, global-index sampler over packed token shards.

Sampling (Megatron-style, resumable into any data-parallel size):

* Epoch ``e`` orders the documents (a permutation seeded by ``(seed, e)`` when shuffling) and
  concatenates them into one token stream; every document already ends with EOS.
* The stream is cut into samples of ``seq_len + 1`` tokens with stride ``seq_len`` (inputs are
  ``tokens[:-1]``, labels ``tokens[1:]``); a remainder too short for a sample is dropped.
* The order of the samples within the epoch is shuffled too, by a keyed pseudo-random bijection
  (a Feistel network) rather than a stored permutation, so memory stays O(num_docs).
* Global sample ``s`` is sample ``s % samples_per_epoch`` of epoch ``s // samples_per_epoch``;
  epochs go on for ever.

A step's global batch is the samples ``[consumed, consumed + global_batch_size)``; data-parallel
rank ``r`` of ``dp`` takes the contiguous ``r``-th slice of it, cut into micro-batches. The only
resume state is ``consumed_samples``, so a run resumed with another dp size reads the same stream.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .errors import DataError
from .integrity import check_shards, check_sizes
from .manifest import TOKENIZER_DIR, read_manifest
from .shards import ShardReader

Batch = Dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------ dataset
class TokenDataset:
    """All shards of one split of a prepared dataset, as one virtual token array of documents.

    Opening checks every shard's file sizes against the manifest and its token ids against the
    tokenizer's vocabulary (cheaply: see data/integrity.py); `verify=True` (data.verify_checksums)
    also checks the sha256 of every file once.
    """

    def __init__(self, path: Path | str, split: str = "train", verify: bool = False) -> None:
        self.path = Path(path)
        self.split = split
        self.manifest = read_manifest(self.path)
        splits = self.manifest.get("splits", {})
        if split not in splits:
            raise DataError(
                f"data.path={path} has no {split!r} split (it has: {', '.join(splits) or 'none'}); "
                f"re-run eurotron-prepare, with eval_every_nth_document > 0 for an eval split"
            )
        entries = splits[split]["shards"]
        if not entries:
            raise DataError(f"data.path={path}: the {split!r} split has no documents")
        check_sizes(self.path / split, entries)
        self.shards = [ShardReader(self.path / split / entry["name"], expected=entry) for entry in entries]
        # 12 bytes per document: its length, and its start in the virtual concatenation of the shards.
        self.doc_lengths = np.concatenate([shard.doc_lengths() for shard in self.shards]).astype(np.int32)
        self.doc_starts = np.zeros(len(self.doc_lengths), dtype=np.int64)
        np.cumsum(self.doc_lengths[:-1], dtype=np.int64, out=self.doc_starts[1:])
        self._shard_starts = np.cumsum([0] + [shard.num_tokens for shard in self.shards]).astype(np.int64)
        tokenizer = self.manifest["tokenizer"]
        self.vocab_size = int(tokenizer["vocab_size"])
        self.eos_id = int(tokenizer["eos_id"])
        self.max_token_id = check_shards(self.path, split, self.shards, entries, self.vocab_size, verify)

    def check_vocab(self, model_vocab_size: int) -> None:
        """Every token id must have a row in the model's embedding (model.vocab_size)."""
        check_model_vocab(self, model_vocab_size)

    @property
    def num_docs(self) -> int:
        return len(self.doc_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self._shard_starts[-1])

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    def has_split(self, split: str) -> bool:
        return split in self.manifest.get("splits", {})

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the virtual stream (a range inside one document)."""
        if len(self.shards) == 1:
            return self.shards[0].tokens(start, end)
        shard = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        base = int(self._shard_starts[shard])
        return self.shards[shard].tokens(start - base, end - base)

    def doc(self, i: int) -> np.ndarray:
        start = int(self.doc_starts[i])
        return self.read(start, start + int(self.doc_lengths[i]))


def check_model_vocab(dataset: Any, model_vocab_size: int) -> None:
    """The trainer's range check: the largest id of `dataset` (one or a blend) below model.vocab_size."""
    if dataset.max_token_id >= model_vocab_size:
        raise DataError(
            f"model.vocab_size={model_vocab_size} is too small for the data: {dataset.path} holds token id "
            f"{dataset.max_token_id}; set model.vocab_size>={max(dataset.max_token_id + 1, dataset.vocab_size)} "
            f"(the tokenizer's vocabulary is {dataset.vocab_size})"
        )


# ---------------------------------------------------------------------------------- permutations
def _mix(values: np.ndarray, key: np.uint64) -> np.ndarray:
    """SplitMix64 finaliser of values ^ key (uint64 arithmetic wraps, as intended)."""
    z = values ^ key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class FeistelPermutation:
    """A seeded pseudo-random bijection of [0, n), evaluated pointwise in O(1) memory.

    A balanced Feistel network over the smallest even number of bits covering n, with cycle walking
    to stay inside [0, n).
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: Tuple[int, ...]) -> None:
        if n <= 0:
            raise ValueError("a permutation needs n > 0")
        self.n = n
        bits = max(2, int(n - 1).bit_length())
        self.half = np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        rng = np.random.default_rng(list(seed))
        self.keys = [np.uint64(k) for k in rng.integers(0, 2**63, size=self.ROUNDS, dtype=np.int64)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right, key) & self.mask)
        return (left << self.half) | right

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = self._encrypt(np.asarray(indices, dtype=np.uint64))
            outside = out >= np.uint64(self.n)
            while outside.any():
                out[outside] = self._encrypt(out[outside])
                outside = out >= np.uint64(self.n)
        return out.astype(np.int64)


# ------------------------------------------------------------------------------------------ sampler
class GlobalSampler:
    """Global sample index → ``seq_len + 1`` tokens (see the module docstring)."""

    CACHED_EPOCHS = 2

    def __init__(self, dataset: TokenDataset, seq_len: int, seed: int, shuffle: bool) -> None:
        self.dataset = dataset
        self.seq_len = seq_len
        self.seed = seed
        self.shuffle = shuffle
        self.samples_per_epoch = (dataset.num_tokens - 1) // seq_len
        if self.samples_per_epoch <= 0:
            raise DataError(
                f"the {dataset.split!r} split of {dataset.path} has {dataset.num_tokens} tokens, fewer "
                f"than one sample of data.seq_len+1={seq_len + 1}; lower data.seq_len or prepare more data"
            )
        self._epochs: "OrderedDict[int, Tuple[np.ndarray, np.ndarray, Optional[FeistelPermutation]]]" = OrderedDict()

    def _epoch(self, epoch: int):
        """(document order, start of each document in the epoch's stream, sample-order permutation)."""
        if epoch in self._epochs:
            self._epochs.move_to_end(epoch)
            return self._epochs[epoch]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(self.dataset.num_docs)
            order = order.astype(np.int32 if self.dataset.num_docs < 2**31 else np.int64)
            sample_order = FeistelPermutation(self.samples_per_epoch, (self.seed, epoch, 1))
        else:
            order = np.arange(self.dataset.num_docs, dtype=np.int64)
            sample_order = None
        starts = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(self.dataset.doc_lengths[order], dtype=np.int64, out=starts[1:])
        self._epochs[epoch] = (order, starts, sample_order)
        while len(self._epochs) > self.CACHED_EPOCHS:
            self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def samples(self, indices: np.ndarray) -> np.ndarray:
        """Tokens of the global samples `indices`: int64 array [len(indices), seq_len + 1]."""
        indices = np.asarray(indices, dtype=np.int64)
        width = self.seq_len + 1
        out = np.empty((len(indices), width), dtype=np.int64)
        epochs = indices // self.samples_per_epoch
        within = indices % self.samples_per_epoch
        for epoch in np.unique(epochs):
            rows = np.nonzero(epochs == epoch)[0]
            order, starts, sample_order = self._epoch(int(epoch))
            positions = within[rows] if sample_order is None else sample_order(within[rows])
            self._gather(out, rows, positions * self.seq_len, order, starts)
        return out

    def _gather(self, out: np.ndarray, rows: np.ndarray, begins: np.ndarray,
                order: np.ndarray, starts: np.ndarray) -> None:
        width = out.shape[1]
        firsts = np.searchsorted(starts, begins, side="right") - 1
        doc_starts, read = self.dataset.doc_starts, self.dataset.read
        for row, begin, i in zip(rows.tolist(), begins.tolist(), firsts.tolist()):
            end, pos = begin + width, begin
            while pos < end:
                doc_end = int(starts[i + 1])
                take = min(end, doc_end) - pos
                src = int(doc_starts[order[i]]) + pos - int(starts[i])
                out[row, pos - begin:pos - begin + take] = read(src, src + take)
                pos += take
                i += 1


# ------------------------------------------------------------------------------------------ batches
def make_batch(tokens: np.ndarray, eos_id: int) -> Batch:
    """`tokens` [B, L+1] → input_ids, labels, loss_mask, position_ids (all [B, L]).

    loss_mask is False where the input is EOS (its target is the next document's first token);
    position_ids restart at 0 after every EOS and at the start of each sample. They are the document
    boundaries too, computed here on the CPU: the model's attention mask (model/masks.py) counts the
    restarts into document ids, so no second tensor travels with the batch and nothing is read back
    from the GPU to find them.
    """
    inputs = np.ascontiguousarray(tokens[:, :-1])
    labels = np.ascontiguousarray(tokens[:, 1:])
    is_eos = inputs == eos_id
    length = inputs.shape[1]
    steps = np.arange(length, dtype=np.int64)
    restart = np.zeros(inputs.shape, dtype=np.int64)
    restart[:, 1:] = np.where(is_eos[:, :-1], steps[1:], 0)
    np.maximum.accumulate(restart, axis=1, out=restart)
    return {
        "input_ids": torch.from_numpy(inputs),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(~is_eos),
        "position_ids": torch.from_numpy(steps - restart),
    }


class BatchLoader:
    """Serves one data-parallel rank its micro-batches, step by step (see the module docstring).

    `batch_transform`, if given, is applied to every micro-batch dict before it is returned (e.g. to
    drop Goldfish positions from ``loss_mask``); it must not change the sample stream.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        seq_len: int,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 1234,
        shuffle: bool = True,
        consumed_samples: int = 0,
        batch_transform: Optional[Callable[[Batch], Batch]] = None,
    ) -> None:
        for key, value in (("data.seq_len", seq_len), ("data.global_batch_size", global_batch_size),
                           ("data.micro_batch_size", micro_batch_size), ("dp_size", dp_size)):
            if value <= 0:
                raise DataError(f"{key}={value}: must be positive")
        if global_batch_size % (micro_batch_size * dp_size):
            raise DataError(
                f"data.global_batch_size={global_batch_size} must be a multiple of "
                f"data.micro_batch_size x data-parallel size = {micro_batch_size} x {dp_size}"
            )
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank={dp_rank} must lie in [0, dp_size={dp_size})")
        if consumed_samples < 0:
            raise DataError(f"consumed_samples={consumed_samples} must be >= 0")
        self.dataset = dataset
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.consumed_samples = consumed_samples
        self.batch_transform = batch_transform
        # A dataset may bring its own sampler (a blend of several datasets: data/blend.py).
        make_sampler = getattr(dataset, "make_sampler", None)
        self.sampler = (make_sampler(seq_len, seed, shuffle) if make_sampler is not None
                        else GlobalSampler(dataset, seq_len, seed, shuffle))

    @property
    def samples_per_epoch(self) -> int:
        return self.sampler.samples_per_epoch

    @property
    def epoch(self) -> int:
        """The epoch of the next sample."""
        return self.consumed_samples // self.sampler.samples_per_epoch

    def step_indices(self) -> np.ndarray:
        """Global sample indices of this rank's share of the next step."""
        per_rank = self.global_batch_size // self.dp_size
        first = self.consumed_samples + self.dp_rank * per_rank
        return np.arange(first, first + per_rank, dtype=np.int64)

    def next_step(self) -> List[Batch]:
        """This rank's micro-batches for the next optimizer step; advances by one global batch."""
        tokens = self.sampler.samples(self.step_indices())
        batches = []
        for at in range(0, len(tokens), self.micro_batch_size):
            batch = make_batch(tokens[at:at + self.micro_batch_size], self.dataset.eos_id)
            batches.append(self.batch_transform(batch) if self.batch_transform else batch)
        self.consumed_samples += self.global_batch_size
        return batches

    def __iter__(self) -> Iterator[List[Batch]]:
        while True:
            yield self.next_step()

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """`consumed_samples` is the resume position; the rest guards against a changed stream."""
        return {"consumed_samples": self.consumed_samples, "seq_len": self.seq_len,
                "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("seq_len", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"the checkpoint's data stream used data.{key}={state[key]!r} but this run has "
                    f"data.{key}={getattr(self, key)!r}; resuming would read different samples. "
                    f"Restore data.{key} or start a new run"
                )
        self.consumed_samples = int(state["consumed_samples"])


def eval_batches(
    dataset: TokenDataset,
    seq_len: int,
    global_batch_size: int,
    micro_batch_size: int,
    num_batches: int,
    dp_rank: int = 0,
    dp_size: int = 1,
) -> Iterator[List[Batch]]:
    """The first `num_batches` global batches of `dataset` in corpus order (no shuffling), capped at
    one pass over it (at least one batch); yields this rank's micro-batches per batch."""
    loader = BatchLoader(dataset, seq_len, global_batch_size, micro_batch_size,
                         dp_rank=dp_rank, dp_size=dp_size, shuffle=False)
    available = max(1, loader.samples_per_epoch // global_batch_size)
    for _ in range(min(num_batches, available)):
        yield loader.next_step()
