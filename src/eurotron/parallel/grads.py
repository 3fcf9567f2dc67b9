"""Global gradient-norm clipping that is correct for any mix of TP, FSDP/HSDP, DDP and PP.

The squared norm of every gradient is summed locally per kind of placement, then reduced over exactly
the mesh dims where that kind is *sharded* (never over replicated dims, which would count a gradient
twice), then over the pipeline ranks (each holds different layers). The clip coefficient is applied
to local shards, so no gradient is ever gathered.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.placement_types import Placement, _StridedShard


def is_sharded(placement: Placement) -> bool:
    # FSDP on top of TP shards dim 0 twice; the outer one is a _StridedShard, which is not `is_shard()`.
    return placement.is_shard() or isinstance(placement, _StridedShard)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def _settle_partial(params: List[torch.nn.Parameter]) -> None:
    """A replicated parameter's gradient may still be a pending sum (Partial); reduce it now."""
    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and any(pl.is_partial() for pl in g.placements):
            placements = [Replicate() if pl.is_partial() else pl for pl in g.placements]
            p.grad = g.redistribute(g.device_mesh, placements)


@torch.no_grad()
def global_grad_norm(params: Iterable[torch.nn.Parameter], pp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """The L2 norm of all gradients of the model, as a plain fp32 scalar equal on every rank."""
    params = [p for p in params if p.grad is not None]
    _settle_partial(params)
    buckets: Dict[Tuple, List[torch.Tensor]] = {}
    for p in params:
        g = p.grad
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
        buckets.setdefault(key, []).append(_local(g))
    device = _local(params[0].grad).device if params else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float32, device=device)
    for key, grads in buckets.items():
        norms = torch._foreach_norm([g.float() if g.dtype != torch.float32 else g for g in grads])
        squared = torch.stack(norms).square().sum()
        if key is not None:
            mesh, placements = key
            for dim, placement in enumerate(placements):
                if is_sharded(placement) and mesh.size(dim) > 1:
                    dist.all_reduce(squared, group=mesh.get_group(dim))
        total += squared
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float,
                   pp_group: Optional[dist.ProcessGroup] = None,
                   extra_params: Iterable[torch.nn.Parameter] = ()) -> torch.Tensor:
    """Scale all gradients so their global L2 norm is at most ``max_norm``; returns the norm before.

    ``extra_params`` are clipped with the same coefficient but not counted in the norm (the second copy
    of a tied weight under PP).
    """
    params = list(params)
    norm = global_grad_norm(params, pp_group)
    if math.isinf(max_norm):
        return norm
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    grads = [_local(p.grad) for p in (*params, *extra_params) if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return norm
