"""Materialise a parallelised model and initialise it exactly as the single-process model would be.

The model's ``init_weights(seed)`` draws every weight from a generator seeded by ``(seed, FQN)``.
On a sharded parameter (a DTensor from TP or FSDP) a random draw would only fill the local shard
with the first numbers of the stream, so every layout would start from different weights. Here the
draw is intercepted: the full tensor is generated from the same generator and this rank keeps its
shard (``distribute_tensor`` with ``src_data_rank=None`` slices locally, no communication), so a
TP2 x PP2 x DP2 run starts from bit-identical weights to the one-process run. The cost is one full
parameter at a time in memory, never the whole model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.overrides import TorchFunctionMode

from ..model.transformer import Transformer, _generator


class _ShardExactRandomInit(TorchFunctionMode):
    """Route ``nn.init.normal_`` on DTensors through a full-size draw followed by local slicing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func is nn.init.normal_:
            tensor = args[0] if args else kwargs["tensor"]
            if isinstance(tensor, DTensor):
                mean = args[1] if len(args) > 1 else kwargs.get("mean", 0.0)
                std = args[2] if len(args) > 2 else kwargs.get("std", 1.0)
                generator = args[3] if len(args) > 3 else kwargs.get("generator")
                _normal_sharded(tensor, mean, std, generator)
                return tensor
        return func(*args, **kwargs)


@torch.no_grad()
def _normal_sharded(tensor: DTensor, mean: float, std: float, generator: Optional[torch.Generator]) -> None:
    local = tensor.to_local()
    full = torch.empty(tensor.shape, dtype=tensor.dtype, device=local.device)
    full.normal_(mean, std, generator=generator)
    shard = distribute_tensor(full, tensor.device_mesh, tensor.placements, src_data_rank=None).to_local()
    if shard.shape != local.shape:
        raise RuntimeError(f"initialising a shard of shape {tuple(local.shape)} from {tuple(shard.shape)}")
    local.copy_(shard)


@torch.no_grad()
def init_model_part(part: Transformer, seed: int) -> None:
    """``part.init_weights(seed)`` with layout-independent values (see the module docstring).

    A pipeline stage that holds a tied output projection but not the embedding initialises it from
    the embedding's generator, so both copies start equal to the single-process shared weight.
    """
    with _ShardExactRandomInit():
        part.init_weights(seed=seed)
        if part.cfg.tie_embeddings and part.tok_embeddings is None and part.output is not None:
            weight = part.output.weight
            nn.init.normal_(weight, 0.0, part.cfg.init_std,
                            generator=_generator(seed, "tok_embeddings.weight", weight))
