"""Learning-rate schedules as multipliers of optim.lr: warmup + cosine, WSD, constant."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..config import SchedulerConfig


def lr_multiplier(cfg: SchedulerConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier for the lr used at optimizer step `step` (0-based, as LambdaLR counts)."""
    warmup = cfg.warmup_steps
    floor = cfg.min_lr_ratio

    def warm(step: int) -> float:
        # Step 0 already gets a non-zero lr so no step is wasted.
        return (step + 1) / warmup

    def cosine(step: int) -> float:
        if step < warmup:
            return warm(step)
        span = max(total_steps - 1 - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def wsd(step: int) -> float:
        if step < warmup:
            return warm(step)
        decay_steps = max(int(round(cfg.decay_fraction * total_steps)), 1)
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        if cfg.decay_shape == "1-sqrt":
            shape = 1.0 - math.sqrt(progress)
        elif cfg.decay_shape == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * shape

    def constant(step: int) -> float:
        return warm(step) if step < warmup else 1.0

    schedules = {"cosine": cosine, "wsd": wsd, "constant": constant}
    if cfg.name not in schedules:
        raise ValueError(f"scheduler.name={cfg.name!r}: choose one of {', '.join(schedules)}")
    return schedules[cfg.name]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_multiplier(cfg, total_steps))
