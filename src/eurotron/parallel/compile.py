"""Per-block ``torch.compile`` (``fullgraph=True``), applied after TP and before FSDP, as torchtitan
orders it, together with activation checkpointing.

Only the block's ``forward`` is compiled (replaced on the instance), not ``Module.__call__``:
  * the graph holds the TP redistributions of the sub-modules (set up before);
  * FSDP2's all-gather / reshard hooks, added to the block afterwards, run eagerly around it;
  * parameter FQNs stay ``layers.<i>....`` (no ``_orig_mod``), so checkpoints are layout-free.
``fullgraph=True`` turns any graph break into an error at the first step instead of a silent slowdown.
A block input that is still an ``AsyncCollectiveTensor`` (the TP embedding's all-reduce or
reduce-scatter, not yet waited on) is materialised before it enters the graph: traced as a graph input,
torch 2.13's AOTAutograd hands its gradient back as a plain tensor where DTensor's backward expects a
DTensor (a crash without SP, a wrong gradient under SP x FSDP2). Only the first block of the first
stage sees one; the copy costs one [batch, seq, dim] activation per micro-batch.
All blocks share one code object, so a same-shaped block reuses the first block's graph; under TP
with sequence parallelism the second block recompiles once (its input is the first block's
AsyncCollectiveTensor, the first block's a plain tensor), later blocks reuse that second graph.

Where the checkpoint goes:
  * ``selective_op``: inside the compiled forward (checkpoint first, then compile). Its policy acts on
    the ops of the traced graph; outside, a compiled graph's ops would never reach the policy.
  * ``full`` / ``selective``: around it (compile first, then checkpoint): the block's compiled forward
    is rerun in backward. Inside, torch 2.13's partitioner fails when a DTensor block (TP/SP) is
    recomputed whole ("expected all tensors_saved_with_vc_check to be Tensors ... DeviceMesh").
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List

import torch
from torch.distributed._functional_collectives import AsyncCollectiveTensor

from ..config import ParallelConfig
from ..model.transformer import Transformer
from .activation import apply_activation_checkpointing


def _with_waited_input(compiled: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(compiled)
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, AsyncCollectiveTensor):
            x = x.clone()  # waits, and returns a plain tensor that keeps x's autograd history
        return compiled(x, *args, **kwargs)

    return forward


def apply_compile(part: Transformer) -> None:
    """Compile the forward of every transformer block of ``part`` in place."""
    for block in part.layers.values():
        block.forward = _with_waited_input(torch.compile(block.forward, fullgraph=True))


def checkpoint_and_compile(part: Transformer, par: ParallelConfig) -> List[int]:
    """Activation checkpointing and compile in the order above; returns the checkpointed layer ids."""
    mode, every = par.activation_checkpoint, par.activation_checkpoint_every
    if not par.compile:
        return apply_activation_checkpointing(part, mode, every)
    if mode == "selective_op":
        chosen = apply_activation_checkpointing(part, mode, every)
        apply_compile(part)
        return chosen
    apply_compile(part)
    return apply_activation_checkpointing(part, mode, every)
