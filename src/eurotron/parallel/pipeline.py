"""Pipeline parallelism with ``torch.distributed.pipelining``.

The layers are cut into ``pp * pp_virtual_stages`` stages (evenly, earlier stages taking the
remainder, or by explicit per-stage counts). A stage is the model itself with the layers it does not
own deleted, and ``tok_embeddings`` (all but the first stage) / ``norm`` + ``output`` (all but the
last) set to None, so parameter FQNs are those of the whole model and checkpoints are layout-free.

Stages are placed on pipeline ranks in a loop (stage s on rank s % pp: GPipe, 1F1B, interleaved
schedules) or a V (rank r holds stages r and 2*pp-1-r: ZBV zero-bubble, DualPipeV). Token ids enter the
first stage; ``position_ids`` are passed to *every* stage as a keyword argument of ``schedule.step``
(the schedule splits and hands each stage its micro-batch's keyword tensors), so RoPE and the
packed-document mask are right on every stage. Each stage builds its own attention mask from them
(model/masks.py): a FlexAttention BlockMask is not a tensor and never crosses a stage boundary. The targets are the labels with dropped positions
set to the ignore index; the last stage's loss function returns
``sum of kept-token losses * dp_size / global kept tokens`` and the schedule does not rescale, so a
pipelined step computes exactly the global-batch-mean gradient.

Tied embeddings: the first stage owns ``tok_embeddings.weight`` and the last ``output.weight``, two
copies of one logical weight that start equal (see ``init.py``). After backward their gradients are
summed between the two owners (Megatron's embedding group), so both copies receive the shared
gradient and stay identical under AdamW; gradient clipping counts the weight once.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class

from ..config import ModelConfig
from ..model.transformer import Transformer, build_model
from ..plan.layout import num_stages, schedule, stage_layer_counts, stage_layer_ranges, stage_to_rank, stages_of_rank
from ..model.loss import IGNORE_INDEX, masked_labels, summed_cross_entropy
from .data import unwrap
from .mesh import ParallelMesh
from .tensor import local_loss, loss_context

# The split and the placement live in the layout model (plan/layout.py); re-exported for callers here.
__all__ = ["stage_layer_counts", "stage_layer_ranges", "stage_to_rank", "stages_of_rank", "build_stage",
           "TiedEmbeddingSync", "PipelineRunner", "schedule_class"]


def schedule_class(name: str) -> type:
    """The torch.distributed.pipelining class the layout model names for ``parallel.pp_schedule``."""
    return get_schedule_class(schedule(name).torch_class)


# ------------------------------------------------------------------------------------- a stage
def build_stage(model_cfg: ModelConfig, stage: int, ranges: List[range], device: str | torch.device = "meta") -> Transformer:
    """The whole model minus what ``stage`` does not own (FQNs unchanged)."""
    model = build_model(model_cfg, device=device)
    owned = ranges[stage]
    for layer_id in range(model_cfg.num_layers):
        if layer_id not in owned:
            del model.layers[str(layer_id)]
    if stage != 0:
        model.tok_embeddings = None
    if stage != len(ranges) - 1:
        model.norm = None
        model.output = None
    return model


# ---------------------------------------------------------------------------------- tied weights
class TiedEmbeddingSync:
    """Sum the gradients of the two copies of a tied embedding/output weight across pipeline stages."""

    def __init__(self, parts: List[nn.Module], stage_ids: List[int], num_stages: int, pmesh: ParallelMesh) -> None:
        par = pmesh.cfg
        self.embedding: Optional[nn.Parameter] = None
        self.output: Optional[nn.Parameter] = None
        for part, stage in zip(parts, stage_ids):
            model = unwrap(part)
            if stage == 0:
                self.embedding = model.tok_embeddings.weight
            if stage == num_stages - 1:
                self.output = model.output.weight
        self.group: Optional[dist.ProcessGroup] = None
        last_pp = stage_to_rank(num_stages - 1, par.pp, par.pp_schedule)
        if last_pp == 0 or (self.embedding is None and self.output is None):
            return
        if par.pp == 2:
            self.group = pmesh.pp_group
            return
        _, dpr, dps, tp = pmesh.coordinate()
        members = [pmesh.rank_at(0, dpr, dps, tp), pmesh.rank_at(last_pp, dpr, dps, tp)]
        self.group = dist.new_group(members, use_local_synchronization=True)

    @staticmethod
    def _local_grad(param: nn.Parameter) -> torch.Tensor:
        grad = param.grad
        return grad.to_local() if hasattr(grad, "to_local") else grad

    @torch.no_grad()
    def __call__(self) -> None:
        if self.embedding is not None and self.output is not None:
            a, b = self._local_grad(self.embedding), self._local_grad(self.output)
            a.add_(b)
            b.copy_(a)
        elif self.embedding is not None or self.output is not None:
            dist.all_reduce(self._local_grad(self.embedding if self.embedding is not None else self.output),
                            group=self.group)


# ----------------------------------------------------------------------------------- the runner
class PipelineRunner:
    """One rank's stages and the schedule that drives them, for training and evaluation steps."""

    def __init__(
        self,
        parts: List[nn.Module],
        stage_ids: List[int],
        pmesh: ParallelMesh,
        device: torch.device,
        n_microbatches: int,
        compute_context: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        par = pmesh.cfg
        self.num_stages = num_stages(par)
        self.tp_enabled = par.tp > 1
        self.compute_context = compute_context
        self.pp_group = pmesh.pp_group
        self.pp_rank = pmesh.pp_rank
        self.owner = [stage_to_rank(s, par.pp, par.pp_schedule) for s in range(self.num_stages)]
        self.local_parts = dict(zip(stage_ids, parts))
        self.stages = [
            PipelineStage(part, stage, self.num_stages, device, group=pmesh.pp_group)
            for part, stage in zip(parts, stage_ids)
        ]
        self.has_first = 0 in stage_ids
        self.has_last = self.num_stages - 1 in stage_ids
        schedule_cls = schedule_class(par.pp_schedule)
        stages = self.stages[0] if issubclass(schedule_cls, PipelineScheduleSingle) else self.stages
        # scale_grads=False: the loss is already the global-batch sum divided by the global count.
        self.schedule = schedule_cls(stages, n_microbatches=n_microbatches, loss_fn=self._loss, scale_grads=False)
        self._scale = 1.0

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return local_loss(summed_cross_entropy(logits, targets, targets != IGNORE_INDEX)) * self._scale

    def _inputs(self, micro_batches: List[Dict[str, torch.Tensor]], device: torch.device) -> Tuple[tuple, dict]:
        def cat(key: str) -> torch.Tensor:
            return torch.cat([mb[key] for mb in micro_batches]).to(device, non_blocking=True)

        args = (cat("input_ids"),) if self.has_first else ()
        kwargs = {"position_ids": cat("position_ids")}
        if self.has_last:
            targets = torch.cat([masked_labels(mb["labels"], mb["loss_mask"]) for mb in micro_batches])
            kwargs["target"] = targets.to(device, non_blocking=True)
        return args, kwargs

    def step(self, micro_batches: List[Dict[str, torch.Tensor]], scale: float, device: torch.device) -> torch.Tensor:
        """Forward + backward over all micro-batches; the summed kept-token loss (0 off the last stage)."""
        self._scale = scale
        args, kwargs = self._inputs(micro_batches, device)
        losses: List[torch.Tensor] = []
        with loss_context(self.tp_enabled), self.compute_context():
            self.schedule.step(*args, losses=losses if self.has_last else None, return_outputs=False, **kwargs)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for loss in losses:
            total += loss.detach().double()
        return total / scale

    # --------------------------------------------------------------------------------- evaluation
    # Forward-only passes go stage by stage outside the schedule: torch's schedule.eval() fails for the
    # zero-bubble and V schedules (their action lists contain split backward steps), and evaluation is
    # rare enough that overlapping micro-batches does not matter.
    def _peer(self, pp_rank: int) -> int:
        return dist.get_global_rank(self.pp_group, pp_rank)

    def _send(self, tensor: torch.Tensor, pp_rank: int) -> None:
        header = torch.zeros(8, dtype=torch.int64, device=tensor.device)
        header[0] = _DTYPES.index(tensor.dtype)
        header[1] = tensor.dim()
        header[2:2 + tensor.dim()] = torch.tensor(tensor.shape)
        dist.send(header, self._peer(pp_rank), group=self.pp_group)
        dist.send(tensor.contiguous(), self._peer(pp_rank), group=self.pp_group)

    def _recv(self, pp_rank: int, device: torch.device) -> torch.Tensor:
        header = torch.zeros(8, dtype=torch.int64, device=device)
        dist.recv(header, self._peer(pp_rank), group=self.pp_group)
        shape = header[2:2 + int(header[1])].tolist()
        tensor = torch.empty(shape, dtype=_DTYPES[int(header[0])], device=device)
        dist.recv(tensor, self._peer(pp_rank), group=self.pp_group)
        return tensor

    @torch.no_grad()
    def eval_step(self, micro_batches: List[Dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        """Forward only; the summed kept-token loss over the micro-batches (0 off the last stage)."""
        total = torch.zeros((), dtype=torch.float64, device=device)
        me, last = self.pp_rank, self.num_stages - 1
        for mb in micro_batches:
            mb = {k: v.to(device, non_blocking=True) for k, v in mb.items()}
            h = mb["input_ids"]
            for stage, owner in enumerate(self.owner):
                if owner != me:
                    continue
                if stage > 0 and self.owner[stage - 1] != me:
                    h = self._recv(self.owner[stage - 1], device)
                with loss_context(self.tp_enabled):
                    with self.compute_context():
                        h = self.local_parts[stage](h, mb["position_ids"])
                    if stage == last:
                        total += local_loss(summed_cross_entropy(h, mb["labels"], mb["loss_mask"])).double()
                if stage < last and self.owner[stage + 1] != me:
                    self._send(h, self.owner[stage + 1])
        return total


_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
