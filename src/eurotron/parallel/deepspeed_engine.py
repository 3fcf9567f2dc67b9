"""parallel.dp_engine=deepspeed: DeepSpeed ZeRO 1/2/3 (with CPU/NVMe offload, ZeRO++) as the DP engine.

The model is built and initialised exactly as for one process (``parallelize``: same seed, same
layout-independent init), then handed to ``deepspeed.initialize`` with eurotron's AdamW as the client
optimizer; eurotron's scheduler sets that optimizer's learning rate. DeepSpeed partitions optimizer
state (ZeRO-1), gradients (ZeRO-2) and parameters (ZeRO-3), reduces gradients (averaged over the DP
ranks, as FSDP and DDP do), clips them with ``optim.grad_clip`` and updates, all in ``engine.step()``.

The loss rule stays eurotron's: each micro-batch back-propagates ``sum of kept-token losses * dp /
global kept tokens``; ``engine.backward(..., scale_wrt_gas=False)`` stops DeepSpeed dividing by the
accumulation steps again, so the gradient is that of the global kept-token mean, as in every layout.
DeepSpeed counts micro-steps: ``engine.step()`` after a non-final micro-batch only advances the count,
the one after the last micro-batch (``step``) reduces, clips and updates.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
from torch import nn

from .deepspeed_config import deepspeed_config
from .init import init_model_part
from .parallelize import ParallelModel
from .tensor import local_loss

INSTALL_HINT = ("parallel.dp_engine=deepspeed needs DeepSpeed: install it after torch with "
                "DS_BUILD_OPS=0 pip install --no-build-isolation -e '.[deepspeed]'")


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return deepspeed


@dataclass
class DeepSpeedModel(ParallelModel):
    """This rank's model inside a DeepSpeed engine (one part: DeepSpeed runs without pipeline stages)."""

    engine: Any = None
    # Parameter names per optimizer group, in group order (for the layout-free checkpoint).
    group_names: Optional[List[List[str]]] = None

    @property
    def steps_in_engine(self) -> bool:
        return True

    def compute_context(self):
        # DeepSpeed's bf16 mode keeps the module in bf16 itself (fp32 masters in the optimizer).
        return contextlib.nullcontext()

    def forward_backward(self, micro_batches, scale: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        last = len(micro_batches) - 1
        for i, mb in enumerate(micro_batches):
            mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            logits = self.engine(mb["input_ids"], mb["position_ids"])
            local = local_loss(loss_fn(logits, mb["labels"], mb["loss_mask"]))
            self.engine.backward(local * scale.to(local.dtype), scale_wrt_gas=False)
            if i < last:
                self.engine.step()  # only counts the micro-step (module docstring)
            loss_sum += local.detach().double()
        return loss_sum

    @torch.no_grad()
    def eval_loss_sum(self, micro_batches, loss_fn: Callable) -> torch.Tensor:
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for mb in micro_batches:
            mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            logits = self.engine(mb["input_ids"], mb["position_ids"])
            total += local_loss(loss_fn(logits, mb["labels"], mb["loss_mask"])).double()
        return total

    def step(self) -> torch.Tensor:
        """The accumulation boundary: reduce, clip, update (DeepSpeed skips a non-finite update itself);
        returns the gradient norm before clipping (inf where DeepSpeed found a non-finite gradient)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        # ZeRO-3 leaves the previous norm in place when it skips: report the skip as eurotron does.
        if norm is None or getattr(self.engine.optimizer, "overflow", False):
            norm = float("inf")
        if isinstance(norm, torch.Tensor):
            return norm.detach().float().to(self.device)
        return torch.tensor(float(norm), dtype=torch.float32, device=self.device)

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        raise RuntimeError("DeepSpeed clips inside engine.step(); the trainer calls DeepSpeedModel.step()")

    def local_parameter_count(self) -> int:
        # ZeRO-3 keeps a partition per rank (ds_tensor); stages 1 and 2 keep whole parameters.
        total = 0
        for p in self.engine.module.parameters():
            total += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
        return total


def attach_deepspeed(model: ParallelModel, optimizer: torch.optim.Optimizer) -> DeepSpeedModel:
    """Wrap the single part of ``model`` and eurotron's ``optimizer`` in a DeepSpeed engine.

    ``optimizer`` keeps being the object the scheduler drives: DeepSpeed replaces the parameters in
    its groups by its flat fp32 partitions but keeps the groups (learning rate, decay) themselves.
    """
    deepspeed = import_deepspeed()
    if model.device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read at DeepSpeed's first accelerator query
    part = model.parts[0]
    names = {id(p): n for n, p in part.named_parameters()}
    group_names = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    config = deepspeed_config(model.cfg, bf16=model.dtype == torch.bfloat16, on_gpu=model.device.type == "cuda")
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=part, optimizer=optimizer, config=config,
                                                      dist_init_required=False)
    return DeepSpeedModel(model.cfg, model.pmesh, model.device, [engine.module], model.stage_ids,
                          model.layer_ranges, model.dtype, model.checkpointed, engine=engine,
                          group_names=group_names)


def materialize_partitioned(part: nn.Module, cfg, device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """ZeRO-3: materialise, initialise and partition one top-level module at a time (embedding, each
    block, norm, output), so a rank never holds more than one full module (the 70B embedding: 4 GiB in
    fp32) instead of the whole model. Values are the single-process ones: each weight draws from its
    own (seed, FQN) generator (``Transformer.init_weights``), which skips what is still on meta and
    fills nothing in what is already partitioned (empty placeholders)."""
    deepspeed = import_deepspeed()
    config = deepspeed_config(cfg, bf16=dtype == torch.bfloat16, on_gpu=device.type == "cuda")
    deepspeed.init_distributed(dist_init_required=False)  # DeepSpeed's view of eurotron's process group
    part.rope_cache = torch.empty_like(part.rope_cache, device=device)  # the root's own buffer
    children = [m for m in part.children() if isinstance(m, nn.ModuleDict)]
    modules = [m for d in children for m in d.values()] + [m for m in part.children() if not isinstance(m, nn.ModuleDict)]
    for module in modules:
        if not any(p.is_meta for p in module.parameters()):
            continue  # a tied output projection: the embedding's parameter, already partitioned
        module.to_empty(device=device)
        init_model_part(part, seed)
        deepspeed.zero.Init(module=module, config_dict_or_path=config, dtype=dtype)
    init_model_part(part, seed)  # the RoPE table (nothing left to draw: every weight is partitioned)
