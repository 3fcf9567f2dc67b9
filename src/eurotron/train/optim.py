"""AdamW with the usual weight-decay split, built from the config."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from ..config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Decay matrices and embeddings; leave 1-D parameters (norm gains, xIELU scalars) undecayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        shape = getattr(param, "ds_shape", param.shape)  # a ZeRO-3 partition is a flat placeholder
        (decay if len(shape) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _implementation_kwargs(implementation: str, device: torch.device) -> Dict[str, bool]:
    if implementation == "fused" or (implementation == "auto" and device.type in ("cuda", "cpu")):
        # Fused AdamW exists for CUDA and CPU in torch >= 2.4 and is the fastest on both.
        return {"fused": True}
    if implementation == "foreach" or implementation == "auto":
        return {"foreach": True}
    return {"foreach": False}


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    if cfg.name != "adamw":
        raise ValueError(f"optim.name={cfg.name!r}: only adamw is available")
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **_implementation_kwargs(cfg.implementation, device),
    )
