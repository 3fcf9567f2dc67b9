"""The one parallelize function: config + mesh -> this rank's model parts, ready to train.

Order (as torchtitan does it, everything on the meta device until the end):
  1. pipeline split: build the stage(s) this rank owns (the whole model without PP);
  2. tensor / sequence parallel plans over the "tp" mesh;
  3. activation checkpointing and per-block torch.compile (compile.py: which wraps which);
  4. FSDP2 / HSDP over the data-parallel dims;
  5. materialise on the device and initialise layout-independently (``init.py``);
  6. DDP wraps the initialised part (DDP needs real tensors).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

from ..config import TrainConfig
from ..model.transformer import Transformer
from ..plan.layout import model_stage_ranges, num_stages, stages_of_rank, step_micro_batches
from .compile import checkpoint_and_compile
from .data import apply_ddp, apply_fsdp, gradient_sync, unwrap
from .float8 import apply_float8
from .grads import clip_grad_norm
from .init import init_model_part
from .mesh import ParallelMesh
from .pipeline import PipelineRunner, TiedEmbeddingSync, build_stage
from .tensor import apply_tensor_parallel, local_loss, loss_context


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that support it, fp32 elsewhere; bf16/fp32 as asked."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


@dataclass
class ParallelModel:
    """This rank's model parts (one per local pipeline stage; one in total without PP)."""

    cfg: TrainConfig
    pmesh: ParallelMesh
    device: torch.device
    parts: List[nn.Module]
    stage_ids: List[int]
    layer_ranges: List[range]
    dtype: torch.dtype
    checkpointed: List[int] = field(default_factory=list)
    pipeline: Optional[PipelineRunner] = None
    tied_sync: Optional[TiedEmbeddingSync] = None

    @property
    def modules(self) -> List[Transformer]:
        """The Transformer of each part (inside DDP if wrapped)."""
        return [unwrap(p) for p in self.parts]

    @property
    def steps_in_engine(self) -> bool:
        """Whether reduce, clip and update happen in one engine call (DeepSpeed), not in the trainer."""
        return False

    @property
    def tp_enabled(self) -> bool:
        return self.cfg.parallel.tp > 1

    @property
    def fsdp_mixed_precision(self) -> bool:
        par = self.cfg.parallel
        return par.dp > 1 and par.dp_engine == "fsdp" and self.dtype != torch.float32

    def compute_context(self) -> contextlib.AbstractContextManager:
        """Autocast to the compute dtype unless FSDP's mixed-precision policy already casts."""
        if self.dtype == torch.float32 or self.fsdp_mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------------------ one step
    def forward_backward(self, micro_batches, scale: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
        """Accumulate the gradient of ``scale * sum of kept-token losses`` over this rank's micro-batches;
        returns this rank's unscaled loss sum (zero on pipeline ranks without the last stage)."""
        if self.pipeline is not None:
            # The scale stays a device tensor: float() here would wait for the device every step.
            loss_sum = self.pipeline.step(micro_batches, scale.float(), self.device)
            if self.tied_sync is not None:
                self.tied_sync()
            return loss_sum
        model = self.parts[0]
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        for i, mb in enumerate(micro_batches):
            mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            with gradient_sync(model, i == len(micro_batches) - 1, self.cfg.parallel.fsdp_grad_sync), \
                    loss_context(self.tp_enabled):
                with self.compute_context():
                    logits = model(mb["input_ids"], mb["position_ids"])
                local = local_loss(loss_fn(logits, mb["labels"], mb["loss_mask"]))
                (local * scale.to(local.dtype)).backward()
            loss_sum += local.detach().double()
        return loss_sum

    @torch.no_grad()
    def eval_loss_sum(self, micro_batches, loss_fn: Callable) -> torch.Tensor:
        if self.pipeline is not None:
            return self.pipeline.eval_step(micro_batches, self.device)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for mb in micro_batches:
            mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            with loss_context(self.tp_enabled):
                with self.compute_context():
                    logits = self.parts[0](mb["input_ids"], mb["position_ids"])
                total += local_loss(loss_fn(logits, mb["labels"], mb["loss_mask"])).double()
        return total

    # ------------------------------------------------------------------------------ gradients
    def _norm_and_extra_params(self):
        """Parameters counted in the gradient norm, and the tied copies that are only clipped."""
        counted, extra = [], []
        tied_copy = self.tied_sync is not None
        for part in self.modules:
            skip = part.output.weight if tied_copy and part.output is not None else None
            for p in part.parameters():
                (extra if p is skip else counted).append(p)
        return counted, extra

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        counted, extra = self._norm_and_extra_params()
        if not self.pmesh.enabled:
            return torch.nn.utils.clip_grad_norm_(counted, max_norm)
        return clip_grad_norm(counted, max_norm, pp_group=self.pmesh.pp_group, extra_params=extra)

    def local_parameter_count(self) -> int:
        """Elements of this rank's parameter shards (a tied weight held twice counts twice)."""
        seen, total = set(), 0
        for part in self.modules:
            for p in part.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += (p.to_local() if hasattr(p, "to_local") else p).numel()
        return total


def parallelize(cfg: TrainConfig, pmesh: ParallelMesh, device: torch.device, seed: int,
                materialize: bool = True) -> ParallelModel:
    """Build this rank's parts of the model for the layout in ``cfg.parallel`` (see module docstring).

    ``materialize=False`` stops after step 4 and leaves everything on the meta device (scale checks).
    """
    par = cfg.parallel
    ranges = model_stage_ranges(cfg.model, par)
    stage_ids = stages_of_rank(pmesh.pp_rank, par)
    dtype = compute_dtype(cfg.train.precision, device)
    parts: List[nn.Module] = []
    checkpointed: List[int] = []
    for stage in stage_ids:
        part = build_stage(cfg.model, stage, ranges, device="meta")
        apply_float8(part, cfg.train.float8, device)  # train.float8 (issue 13): before TP and compile
        if par.tp > 1:
            apply_tensor_parallel(part, pmesh.tp_mesh, par.sequence_parallel)
        checkpointed += checkpoint_and_compile(part, par)
        if par.dp > 1 and par.dp_engine == "fsdp":
            apply_fsdp(part, pmesh.fsdp_mesh, dtype, pipelined=par.pp > 1,
                       reshard=par.fsdp_reshard_after_forward)
        if materialize and par.dp_engine == "deepspeed" and par.deepspeed.zero_stage == 3:
            from .deepspeed_engine import materialize_partitioned

            materialize_partitioned(part, cfg, device, dtype, seed)  # one module at a time: never the whole model
        elif materialize:
            part.to_empty(device=device)
            init_model_part(part, seed)
            if par.dp > 1 and par.dp_engine == "ddp":
                part = apply_ddp(part, pmesh.sub("dp_replicate"), device)
        parts.append(part)
    model = ParallelModel(cfg, pmesh, device, parts, stage_ids, ranges, dtype, checkpointed)
    if par.pp > 1 and materialize:
        model.pipeline = PipelineRunner(parts, stage_ids, pmesh, device, step_micro_batches(cfg), model.compute_context)
        if cfg.model.tie_embeddings:
            model.tied_sync = TiedEmbeddingSync(parts, stage_ids, num_stages(par), pmesh)
    return model
