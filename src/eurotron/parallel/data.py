"""Data parallelism: FSDP2 (``fully_shard``, ZeRO-3), HSDP (replicate x shard) and DDP.

FSDP2 shards every transformer block separately (one all-gather / reduce-scatter per block, which
overlaps with compute) and the rest of the model part (embedding, final norm, output) as the root
group. On GPUs with bf16 the policy keeps fp32 sharded master weights, gathers bf16 copies for compute
and reduces gradients in fp32. Both engines average gradients over the data-parallel ranks; the trainer's
loss scale (dp size / global kept tokens) turns that average back into the global-batch mean.
"""

from __future__ import annotations

import contextlib
import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from ..model.transformer import Transformer


def mixed_precision_policy(compute_dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16 (or fp16) compute copies with fp32 gradient reduction; plain fp32 otherwise."""
    if compute_dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)


def apply_fsdp(part: Transformer, mesh: DeviceMesh, compute_dtype: torch.dtype, pipelined: bool) -> None:
    """Shard ``part`` in place: each block, then the part itself (embedding / norm / output)."""
    policy = mixed_precision_policy(compute_dtype)
    # Under PP a block runs once per micro-batch forward and backward; keeping its gathered weights
    # from forward to backward avoids one all-gather per micro-batch.
    reshard = not pipelined
    for block in part.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(part, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)


def apply_ddp(part: nn.Module, mesh: DeviceMesh, device: torch.device) -> DistributedDataParallel:
    """Wrap an initialised part in DDP over the replicate dim (DDP keeps full replicas)."""
    return DistributedDataParallel(
        part,
        process_group=mesh.get_group(),
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        bucket_cap_mb=100,
    )


def unwrap(part: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 and TP keep the module itself)."""
    return part.module if isinstance(part, DistributedDataParallel) else part


def gradient_sync(part: nn.Module, enabled: bool):
    """Context that defers DP gradient reduction for all but the last micro-batch of a step."""
    if isinstance(part, DistributedDataParallel) and not enabled:
        return part.no_sync()
    if isinstance(part, FSDPModule):
        part.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()

