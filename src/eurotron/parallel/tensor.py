"""Tensor parallelism (Megatron-style) and sequence parallelism as DTensor plans over the "tp" mesh.

Per block, with TP degree t::

    attention_norm, ffn_norm     replicated weights; with SP they run on sequence shards (SequenceParallel)
    attention.wq / wk / wv       column-parallel: each rank holds num_heads/t query and num_kv_heads/t KV heads
    attention.q_norm / k_norm    (QK-norm) replicated weights applied to the local heads
    attention.wo                 row-parallel: all-reduce (or reduce-scatter to sequence shards with SP)
    feed_forward.w1 / w3         column-parallel over the hidden (ffn) dim
    feed_forward.act             (xIELU) replicated scalars applied to the local ffn shard
    feed_forward.w2              row-parallel

and for the whole model a vocab-parallel embedding (row-wise over the vocabulary) and a vocab-parallel
output projection whose logits stay sharded over the vocabulary for ``loss_parallel`` (the softmax is
computed without ever gathering [batch, seq, vocab]).

Every parameter of a TP-parallelised module becomes a DTensor on the TP mesh, replicated ones included:
a replicated weight applied to sharded activations (QK-norm on local heads, xIELU on the local ffn
shard, norms under SP) gets its gradient summed over the TP group by DTensor, and one kind of parameter
keeps the optimizer and gradient clipping uniform. The model code itself is unaware of any of this:
attention reads its head count from the projection output (``view(..., -1, head_dim)``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from ..model.transformer import Transformer, TransformerBlock


class ReplicatedParamsOnLocalInput(ParallelStyle):
    """Replicate a module's parameters over TP; its (first) input is this rank's shard along ``dim``
    (or the full tensor for ``Replicate``). The module runs on DTensors, so the weight gradient is
    reduced over TP where the input was sharded; the output goes back as a local tensor."""

    def __init__(self, input_placement: Placement) -> None:
        super().__init__()
        self.input_placement = input_placement

    @staticmethod
    def _replicate_params(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            dparam = nn.Parameter(DTensor.from_local(param, mesh, [Replicate()], run_check=False),
                                  requires_grad=param.requires_grad)
            module.register_parameter(pname, dparam)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        placement = self.input_placement

        def to_dtensor(mod: nn.Module, inputs: Any, mesh: DeviceMesh) -> Any:
            x, *rest = inputs
            if not isinstance(x, DTensor):
                x = DTensor.from_local(x, mesh, [placement], run_check=False)
            return (x, *rest)

        def to_local(mod: nn.Module, output: Any, mesh: DeviceMesh) -> Any:
            return output.to_local() if isinstance(output, DTensor) else output

        return distribute_module(module, device_mesh, self._replicate_params, to_dtensor, to_local)


def _block_plan(block: TransformerBlock, sequence_parallel: bool) -> Dict[str, ParallelStyle]:
    seq = Shard(1) if sequence_parallel else Replicate()
    # Norm weights: with SP the norms see sequence shards (SequenceParallel); without, full activations.
    norm_style = (lambda: SequenceParallel()) if sequence_parallel else (lambda: ReplicatedParamsOnLocalInput(Replicate()))
    plan: Dict[str, ParallelStyle] = {
        "attention_norm": norm_style(),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=seq),
        "ffn_norm": norm_style(),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=seq),
    }
    if sequence_parallel:
        # Gather the sequence shards once before the projections; (rope, mask) pass through untouched.
        plan["attention"] = PrepareModuleInput(
            input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None),
            use_local_output=True,
        )
        plan["feed_forward"] = PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
        )
    if block.attention.q_norm is not None:
        # q/k are [batch, seq, local heads, head_dim]: sharded over heads (dim 2).
        plan["attention.q_norm"] = ReplicatedParamsOnLocalInput(Shard(2))
        plan["attention.k_norm"] = ReplicatedParamsOnLocalInput(Shard(2))
    if block.feed_forward.kind == "swiglu":
        plan["feed_forward.w3"] = ColwiseParallel()
    else:
        # xIELU's two scalars act on this rank's slice of the ffn dim.
        plan["feed_forward.act"] = ReplicatedParamsOnLocalInput(Shard(2))
    return plan


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Parallelise ``model`` (a whole model or one pipeline stage of it) in place over ``tp_mesh``."""
    seq = Shard(1) if sequence_parallel else Replicate()
    plan: Dict[str, ParallelStyle] = {}
    if model.tok_embeddings is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if model.norm is not None:
        plan["norm"] = SequenceParallel() if sequence_parallel else ReplicatedParamsOnLocalInput(Replicate())
    if model.output is not None:
        # Logits stay a DTensor sharded over the vocabulary: the loss runs under loss_parallel.
        plan["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1), use_local_output=False)
    if plan:
        parallelize_module(model, tp_mesh, plan)
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, _block_plan(block, sequence_parallel))
    # A tied output projection was replaced by its own DTensor; both shard the vocabulary the same way
    # (Shard(0) of [vocab, dim]), so tie them again to one parameter.
    model._retie()


def loss_context(tp_enabled: bool):
    """``loss_parallel`` when logits are vocab-sharded DTensors; wraps both the loss and its backward."""
    return loss_parallel() if tp_enabled else contextlib.nullcontext()


def local_loss(loss: torch.Tensor) -> torch.Tensor:
    """A loss computed under loss_parallel is a replicated DTensor; the trainer works with plain tensors."""
    return loss.to_local() if isinstance(loss, DTensor) else loss
