"""Write a model-only DCP checkpoint tensor by tensor, without ever holding the whole model.

``dcp.save`` plans from the state dict's shapes and dtypes and asks the planner for each tensor's data
only when it writes that tensor (``SavePlanner.resolve_data``). The state dict given to it here holds
zero-stride placeholders (``torch.zeros(()).expand(shape)``: the right shape, no memory), and the
planner's ``resolve_data`` produces the real tensor on demand. Each tensor goes to its own file
(``single_file_per_rank=False``), because FileSystemWriter keeps every tensor of a file alive until the
file is closed; so at most two tensors (the one being written and the previous one, still referenced by
the writer's loop) are in memory at a time. The result is an ordinary single-process DCP checkpoint
under the ``model.`` prefix, which ``load_checkpoint`` (and any parallel layout, through DCP's
resharding) reads like one the trainer wrote.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemWriter
from torch.distributed.checkpoint.planner import WriteItem

from .dcp_reader import MODEL_PREFIX
from .errors import ConvertError

warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class _OnDemandPlanner(DefaultSavePlanner):
    """Plans from the placeholders; hands DCP the produced tensor when it writes each one."""

    def __init__(self, produce: Callable[[str], torch.Tensor], specs: Dict[str, Tuple[Tuple[int, ...], torch.dtype]],
                 on_tensor: Optional[Callable[[str, int], None]] = None) -> None:
        super().__init__()
        self._produce = produce
        self._specs = specs
        self._on_tensor = on_tensor

    def resolve_data(self, write_item: WriteItem):  # noqa: ANN201 - torch's signature
        fqn = write_item.index.fqn
        if fqn not in self._specs:
            return super().resolve_data(write_item)
        shape, dtype = self._specs[fqn]
        tensor = self._produce(fqn)
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise ConvertError(f"{fqn}: produced {tuple(tensor.shape)} {tensor.dtype}, expected {tuple(shape)} {dtype}")
        if self._on_tensor is not None:
            self._on_tensor(fqn, tensor.numel() * tensor.element_size())
        return tensor.contiguous()


def write_model_checkpoint(
    path: Path,
    specs: Dict[str, Tuple[Tuple[int, ...], torch.dtype]],
    produce: Callable[[str], torch.Tensor],
    on_tensor: Optional[Callable[[str, int], None]] = None,
) -> None:
    """Write the tensors ``specs`` (name without the ``model.`` prefix -> (shape, dtype)) to a DCP directory,
    calling ``produce(name)`` for each one as it is written."""
    state = {MODEL_PREFIX + name: torch.zeros((), dtype=dtype).expand(shape) for name, (shape, dtype) in specs.items()}
    prefixed = {MODEL_PREFIX + name: spec for name, spec in specs.items()}

    def produce_prefixed(fqn: str) -> torch.Tensor:
        return produce(fqn[len(MODEL_PREFIX):])

    def report(fqn: str, nbytes: int) -> None:
        if on_tensor is not None:
            on_tensor(fqn[len(MODEL_PREFIX):], nbytes)

    planner = _OnDemandPlanner(produce_prefixed, prefixed, report)
    writer = FileSystemWriter(str(path), single_file_per_rank=False, thread_count=1)
    dcp.save(state, storage_writer=writer, planner=planner, no_dist=True)
