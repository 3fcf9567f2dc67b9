"""The next step's micro-batches, prepared in a background thread while this step computes.

``Prefetcher`` wraps a ``BatchLoader`` with the same interface (``next_step``, ``state_dict``,
``load_state_dict``, ``batch_transform``). One thread reads, packs and (Goldfish) masks the samples of
step k+1 while step k runs; on CUDA it also copies them into pinned host memory, so the trainer's
``.to(device, non_blocking=True)`` is a real asynchronous copy. The sample stream is the loader's own:
one thread calls ``next_step`` in order, nothing else touches the loader meanwhile.

The checkpointed position is the *consumed* one: ``state_dict`` describes the loader as it was when
the trainer took its last step's batches, not after the prefetched step, so a resume reads exactly
the step after the last trained one. Goldfish's dropped/eligible counts are likewise taken per
prepared step and handed on only when the trainer consumes that step (``pop_counts``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import torch

from .loader import Batch, BatchLoader


class Prefetcher:
    def __init__(self, loader: BatchLoader, pin_memory: bool = False) -> None:
        self.loader = loader
        self.pin_memory = pin_memory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eurotron-prefetch")
        self._next: Optional[Future] = None
        self._consumed_state: Optional[Dict[str, Any]] = None  # loader state after the last consumed step
        self._counts = [0, 0]  # Goldfish (dropped, eligible) of the consumed steps since the last pop

    @property
    def batch_transform(self):
        return self.loader.batch_transform

    def _produce(self) -> Tuple[List[Batch], Tuple[int, int]]:
        batches = self.loader.next_step()
        if self.pin_memory:
            batches = [{k: v.pin_memory() for k, v in mb.items()} for mb in batches]
        pop = getattr(self.loader.batch_transform, "pop_counts", None)
        return batches, (pop() if pop else (0, 0))

    def next_step(self) -> List[Batch]:
        batches, counts = (self._next or self._pool.submit(self._produce)).result()
        self._counts = [a + b for a, b in zip(self._counts, counts)]
        # The loader is idle here (the next step is not submitted yet): its state is the consumed position.
        self._consumed_state = self.loader.state_dict()
        self._next = self._pool.submit(self._produce)
        return batches

    def pop_counts(self) -> Tuple[int, int]:
        """Goldfish's (dropped, eligible) positions of the steps consumed since the last call."""
        counts, self._counts = tuple(self._counts), [0, 0]
        return counts

    def _discard(self) -> None:
        """Forget the prepared step (its samples are read again after a position change)."""
        if self._next is not None:
            self._next.result()
            self._next = None
            if self._consumed_state is not None:
                self.loader.load_state_dict(self._consumed_state)

    def state_dict(self) -> Dict[str, Any]:
        return dict(self._consumed_state) if self._consumed_state is not None else self.loader.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._discard()
        self.loader.load_state_dict(state)
        self._consumed_state = None

    def close(self) -> None:
        self._discard()
        self._pool.shutdown(wait=True)


def wrap_loader(loader: BatchLoader, device: torch.device) -> Prefetcher:
    """The trainer's loader: prefetched, into pinned memory when the batches go to a GPU."""
    return Prefetcher(loader, pin_memory=device.type == "cuda")
