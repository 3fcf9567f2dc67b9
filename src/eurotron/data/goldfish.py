"""Goldfish loss masks (Hans et al. 2024), bit-identical to the Apertus recipe.

A pseudo-random subset of target positions is excluded from the next-token loss, so a model never
receives a document's full token sequence as supervision and cannot reproduce it verbatim. The
mask is computed here, in the data path, and ANDed into ``loss_mask``; the model, tensor/pipeline
parallelism and packing never see it (DESIGN.md, "Where Goldfish lives";
``../shared/reference/goldfish.md`` is the specification this file follows).

Strategies, for one row of labels ``y[0 … L-1]``:

* ``hash``: for ``j >= h-1`` the key is the product of the ``h`` labels ``y[j-h+1 … j]`` in int64
  (two's-complement wrap-around), taken modulo 1,000,003 (non-negative); ``j`` is dropped iff
  ``table[key] < 1/k``, where ``table = torch.rand(1_000_003)`` from a CPU generator seeded
  2971215073. Positions ``0 … h-2`` are never dropped. The decision depends only on the ``h``
  labels of the window, never on the offset, so a passage repeated anywhere is masked the same way.
* ``static``: drop positions ``start, start+k, start+2k, …`` of each row.

Comparing the float32 table with ``1/k`` is done in float32, as torch does for the reference code;
for every k up to 200,000 this gives the same decisions as an exact comparison.
"""

from __future__ import annotations

import functools
import operator
import threading
from typing import Any, Dict, Optional

import torch

TABLE_SIZE = 1_000_003
TABLE_SEED = 2971215073
STRATEGIES = ("hash", "static")
DROPPED_FRAC_KEY = "goldfish_dropped_frac"

Batch = Dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------ table
@functools.lru_cache(maxsize=1)
def hash_table() -> torch.Tensor:
    """The 1,000,003 floats in [0, 1) of the hash strategy, built once per process on the CPU.

    (A CUDA generator would give a different table.) Callers must not modify the returned tensor.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(TABLE_SEED)
    return torch.rand(TABLE_SIZE, generator=generator, dtype=torch.float32, device="cpu")


@functools.lru_cache(maxsize=8)
def _drop_table(k: int) -> torch.Tensor:
    """``hash_table() < 1/k`` as booleans (1 MB), so a mask is one gather per position."""
    return hash_table() < 1.0 / k


# ----------------------------------------------------------------------------------- validation
def _check_int(name: str, value: Any, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # int and numpy integers; never float or str
    except TypeError:
        raise TypeError(f"goldfish {name}={value!r}: must be an integer >= {minimum}") from None
    if value < minimum:
        hint = {"k": " (one position in k is dropped; k=1 drops every eligible position)",
                "h": " (the number of labels hashed per decision)",
                "start": " (the first position the static strategy drops)"}.get(name, "")
        raise ValueError(f"goldfish {name}={value}: must be >= {minimum}{hint}")
    return value


def _check_labels(labels: Any) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(
            f"goldfish labels must be an integer tensor of token ids, got dtype {labels.dtype}; "
            f"pass the batch's `labels` (int64), not logits or a mask"
        )
    if labels.dim() not in (1, 2):
        raise ValueError(
            f"goldfish labels must have shape [L] or [B, L], got {tuple(labels.shape)} ({labels.dim()} dims)"
        )
    return labels


# ------------------------------------------------------------------------------------------ masks
def window_products(labels: torch.Tensor, h: int) -> torch.Tensor:
    """``[B, L]`` int64 → ``[B, L-h+1]``: entry ``s`` is the wrap-around product ``labels[:, s:s+h]``.

    Exact in int64 because multiplication modulo 2**64 is associative and commutative: windows of
    length ``m`` are doubled to ``2m`` (``W_2m[s] = W_m[s] * W_m[s+m]``) and the powers of two that
    make up ``h`` are joined the same way, so the cost is O(L log h) instead of O(L h).
    """
    length = labels.shape[-1]
    if h > length:
        return labels.new_empty(labels.shape[:-1] + (0,))
    result: Optional[torch.Tensor] = None  # products over windows of length `done`
    done = 0
    power, size = labels, 1  # products over windows of length `size` (a power of two)
    remaining = h
    while True:
        if remaining & 1:
            if result is None:
                result = power
            else:
                width = length - done - size + 1
                result = result[..., :width] * power[..., done:done + width]
            done += size
        remaining >>= 1
        if not remaining:
            break
        width = length - 2 * size + 1
        power = power[..., :width] * power[..., size:size + width]
        size *= 2
    assert result is not None and done == h
    return result


def goldfish_drop_mask(labels: Any, k: int, h: int, strategy: str = "hash", start: int = 0) -> torch.Tensor:
    """True where a target position is excluded from the loss (see the module docstring).

    `labels` is an integer tensor ``[L]`` or ``[B, L]``; the result is a new BoolTensor of the same
    shape on the same device (the hash itself is computed on the CPU).
    """
    k = _check_int("k", k, 1)
    h = _check_int("h", h, 1)
    start = _check_int("start", start, 0)
    if strategy not in STRATEGIES:
        raise ValueError(f"goldfish strategy={strategy!r}: must be one of {', '.join(STRATEGIES)}")
    labels = _check_labels(labels)
    device = labels.device
    rows = labels if labels.dim() == 2 else labels.unsqueeze(0)
    drop = torch.zeros(rows.shape, dtype=torch.bool)
    if strategy == "static":
        drop[:, start::k] = True
    else:
        products = window_products(rows.to("cpu", torch.int64), h)
        if products.numel():
            keys = torch.remainder(products, TABLE_SIZE)  # sign of the divisor: non-negative
            # index_select: a plain gather (advanced indexing takes a far slower path here)
            drop[:, h - 1:] = _drop_table(k).index_select(0, keys.flatten()).view(keys.shape)
    return drop.reshape(labels.shape).to(device)


# ------------------------------------------------------------------------------- loader transform
class GoldfishTransform:
    """A `BatchLoader` ``batch_transform``: ANDs ``~goldfish_drop_mask(labels)`` into ``loss_mask``.

    Returns a new dict with a new ``loss_mask`` (the incoming tensors are never modified in place);
    positions already excluded (after EOS) stay excluded, everything else is passed through as is.
    Counts of dropped and eligible positions accumulate until `pop_counts` for logging.
    """

    def __init__(self, k: int, h: int, strategy: str = "hash", start: int = 0) -> None:
        self.k = _check_int("k", k, 1)
        self.h = _check_int("h", h, 1)
        self.start = _check_int("start", start, 0)
        if strategy not in STRATEGIES:
            raise ValueError(f"goldfish strategy={strategy!r}: must be one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self._lock = threading.Lock()
        self._dropped = 0
        self._eligible = 0

    def __call__(self, batch: Batch) -> Batch:
        drop = goldfish_drop_mask(batch["labels"], self.k, self.h, self.strategy, self.start)
        before = batch["loss_mask"].bool()
        after = before & ~drop.to(before.device)
        eligible, kept = int(before.sum()), int(after.sum())
        with self._lock:
            self._eligible += eligible
            self._dropped += eligible - kept
        out = dict(batch)
        out["loss_mask"] = after
        return out

    def pop_counts(self) -> tuple:
        """(dropped, eligible) positions since the last call; resets both."""
        with self._lock:
            counts = (self._dropped, self._eligible)
            self._dropped = self._eligible = 0
        return counts

    def __repr__(self) -> str:
        return f"GoldfishTransform(k={self.k}, h={self.h}, strategy={self.strategy!r}, start={self.start})"


def build_batch_transform(loss_cfg: Any) -> Optional[GoldfishTransform]:
    """The training loader's transform for `loss_cfg` (a LossConfig): None for the standard loss."""
    if loss_cfg is None or loss_cfg.name == "standard":
        return None
    if loss_cfg.name != "goldfish":
        raise ValueError(f"loss.name={loss_cfg.name!r}: must be standard or goldfish")
    return GoldfishTransform(loss_cfg.k, loss_cfg.h, loss_cfg.strategy, loss_cfg.start)


def dropped_fraction_record(transform: Any, group: Any = None, device: Any = None) -> Dict[str, float]:
    """``{"goldfish_dropped_frac": x}`` for a step's log record, or ``{}`` without Goldfish.

    x is the fraction of the positions that would otherwise count that Goldfish dropped, over the
    whole global batch: with a data-parallel `group` the counts are summed over its ranks (every rank
    of the group must call this, once per step, as the trainer does).
    """
    # Any source of Goldfish counts: the transform itself, or the prefetching loader that hands on the
    # counts of the steps it has delivered (data/prefetch.py).
    if transform is None or not hasattr(transform, "pop_counts"):
        return {}
    counts = torch.tensor(transform.pop_counts(), dtype=torch.float64, device=device)
    if group is not None:
        import torch.distributed as dist

        dist.all_reduce(counts, group=group)
    dropped, eligible = counts.tolist()
    return {DROPPED_FRAC_KEY: dropped / eligible if eligible else 0.0}
