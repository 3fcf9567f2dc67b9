"""Data parallelism: FSDP2 (``fully_shard``, ZeRO-3), HSDP (replicate x shard) and DDP.

FSDP2 units, as torchtitan wraps them: every transformer block, ``tok_embeddings``, ``[norm, output]``
together, then the part itself as the root (which then holds nothing but what is left, e.g. a tied
weight's owner). One all-gather / reduce-scatter per unit, so each overlaps with the neighbouring unit's
compute; the root no longer gathers ~1B parameters (8B model) at forward start and backward start.

``parallel.fsdp_reshard_after_forward`` (auto | true | false) decides whether a unit frees its gathered
weights after forward (re-gathered in backward: less memory, one more all-gather per unit) or keeps
them to backward. auto, torchtitan's rule: blocks, embedding and root reshard without PP and stay
gathered under PP (a stage runs forward once per micro-batch: resharding would re-gather every
micro-batch); ``[norm, output]`` never reshards (backward starts with it, so it would be gathered
again at once). true / false apply to every unit, ``[norm, output]`` included: true is the
small-memory choice under PP.

``parallel.fsdp_grad_sync`` under gradient accumulation: micro_batch (default) reduce-scatters every
micro-batch, so between micro-batches each rank holds only its gradient shard; last defers the
reduction to the last micro-batch (one reduction per step, but a full unsharded gradient held in
between). It applies to FSDP without PP; under PP torch.distributed.pipelining's schedule always
reduces once after the last micro-batch (``PipelineStage.perform_reduce_grad``), and DDP always
defers to the last micro-batch (its gradients are full-size either way).

On GPUs with bf16 the policy keeps fp32 sharded master weights, gathers bf16 copies for compute and
reduces gradients in fp32. Both engines average gradients over the data-parallel ranks; the trainer's
loss scale (dp size / global kept tokens) turns that average back into the global-batch mean.
"""

from __future__ import annotations

import contextlib
from typing import Dict

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


def reshard_choice(value: object) -> str:
    """The config value as auto | true | false (YAML booleans reach the str field as True/False)."""
    return str(value).lower()


def reshard_settings(choice: str, pipelined: bool) -> Dict[str, bool]:
    """reshard_after_forward per kind of unit: "blocks" (blocks, embedding, root) and "head" ([norm, output])."""
    choice = reshard_choice(choice)
    if choice == "auto":
        return {"blocks": not pipelined, "head": False}
    return {"blocks": choice == "true", "head": choice == "true"}


def apply_fsdp(part: Transformer, mesh: DeviceMesh, compute_dtype: torch.dtype, pipelined: bool,
               reshard: str = "auto") -> None:
    """Shard ``part`` in place: each block, the embedding, [norm, output], then the part (module docstring)."""
    policy = mixed_precision_policy(compute_dtype)
    settings = reshard_settings(reshard, pipelined)
    for block in part.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=settings["blocks"])
    tied = part.tok_embeddings is not None and part.output is not None and \
        part.output.weight is part.tok_embeddings.weight
    # A tied weight (one stage holding both ends) can belong to one unit only: it stays in the root,
    # whose parameters FSDP2 keeps gathered from forward to backward whatever the setting.
    if part.tok_embeddings is not None and not tied:  # absent on pipeline stages after the first
        fully_shard(part.tok_embeddings, mesh=mesh, mp_policy=policy, reshard_after_forward=settings["blocks"])
    if part.output is not None and not tied:  # the last stage: norm and output form one unit
        fully_shard([part.norm, part.output], mesh=mesh, mp_policy=policy, reshard_after_forward=settings["head"])
    fully_shard(part, mesh=mesh, mp_policy=policy, reshard_after_forward=settings["blocks"])


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


def gradient_sync(part: nn.Module, last_micro_batch: bool, fsdp_grad_sync: str = "last"):
    """Context for one micro-batch's backward: whether DP gradients are reduced after it.

    FSDP with fsdp_grad_sync=micro_batch reduces every micro-batch; otherwise (and always for DDP)
    only the last micro-batch of a step reduces.
    """
    enabled = last_micro_batch or (isinstance(part, FSDPModule) and fsdp_grad_sync == "micro_batch")
    if isinstance(part, DistributedDataParallel) and not enabled:
        return part.no_sync()
    if isinstance(part, FSDPModule):
        part.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()
