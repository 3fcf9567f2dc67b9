"""Activation checkpointing (recompute in backward), applied without renaming any parameter.

Modes (``parallel.activation_checkpoint``):
  none          keep every activation;
  full          every block keeps only its input and recomputes its whole forward in backward;
  selective     ``full`` for every ``activation_checkpoint_every``-th block only (block level);
  selective_op  every block, op level: the outputs of matmuls, attention kernels and collectives are
                kept, the cheap elementwise / norm / RoPE ops are recomputed (torchtitan's "op" SAC).

selective_op keeps *every* matmul output, not torchtitan's every-second one: it then recomputes no
matmul at all (≈ no extra FLOPs) and still drops the norm, RoPE, SiLU and product activations; who
needs less memory takes ``selective`` or ``full``.

A checkpointed block's ``forward`` is replaced, on the instance, by one that runs the original under
``torch.utils.checkpoint`` (non-reentrant). Unlike a wrapper module this keeps parameter FQNs
``layers.<i>....`` (checkpoints stay interchangeable), and unlike the composable hook-based API it
puts the checkpoint *inside* the block's forward, where ``torch.compile(fullgraph=True)`` traces it
as one region (``compile.py`` compiles that forward afterwards).
"""

from __future__ import annotations

import functools
from typing import Callable, List

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..model.transformer import Transformer


def _op(namespace, name: str):
    packet = getattr(namespace, name, None)
    return None if packet is None else getattr(packet, "default", packet)


def _saved_ops() -> frozenset:
    """Ops whose outputs selective_op keeps: matmuls, attention kernels (SDPA backends, flex), and the
    TP collectives (recomputing them would repeat communication)."""
    aten, c10d = torch.ops.aten, torch.ops._c10d_functional
    names = [(aten, n) for n in ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu",
                                 "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                                 "_scaled_dot_product_cudnn_attention",
                                 "_scaled_dot_product_fused_attention_overrideable")]
    names += [(c10d, n) for n in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor")]
    ops = {_op(ns, n) for ns, n in names}
    ops.add(getattr(torch.ops.higher_order, "flex_attention", None))
    # model/linear.py's oneDNN matmul (fp32 CPU linears) is a matmul too.
    ops.add(_op(torch.ops.eurotron, "onednn_mm"))
    return frozenset(op for op in ops if op is not None)


SAVED_OPS = _saved_ops()


def selective_op_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:  # noqa: ANN001 - torch's signature
    """Stateless (so compiled graphs do not depend on call order): keep listed ops, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_op_contexts():
    return create_selective_checkpoint_contexts(selective_op_policy)


def checkpointed_layers(mode: str, every: int, layer_ids: List[int]) -> List[int]:
    """Which global layer ids recompute (some of) their activations."""
    if mode in ("full", "selective_op"):
        return list(layer_ids)
    if mode == "selective":
        return [i for i in layer_ids if i % every == 0]
    return []


def checkpoint_block(block: nn.Module, mode: str) -> None:
    """Run ``block``'s forward under ``torch.utils.checkpoint`` from now on (FQNs unchanged)."""
    inner: Callable = block.forward
    extra = {"context_fn": _selective_op_contexts} if mode == "selective_op" else {}

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **extra, **kwargs)

    block.forward = forward


def apply_activation_checkpointing(part: Transformer, mode: str, every: int) -> List[int]:
    """Recompute the chosen blocks' activations in backward; returns their layer ids."""
    chosen = checkpointed_layers(mode, every, [int(k) for k in part.layers.keys()])
    for layer_id in chosen:
        checkpoint_block(part.layers[str(layer_id)], mode)
    return chosen
