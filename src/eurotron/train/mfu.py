"""Model FLOPs utilisation: which peak to divide by, detected from the device when the cluster sets none.

``cluster.peak_flops`` wins when a cluster config sets it (the EuroHPC systems do). ``null`` (the
``local`` cluster) means: detect. A known GPU gives its dense bf16 peak (``plan/gpus.py``); the CPU
keeps ``CPU_PEAK_FLOPS``; an unknown GPU gets one warning and MFU ``null`` (``None``), because a
guessed peak would make the number meaningless.
"""

from __future__ import annotations

import functools
import sys
from typing import Optional

import torch

from ..plan.gpus import match_gpu

# A 2-core AMD EPYC (Zen 5) CI machine's measured fp32 matmul rate (benchmarks/cpu_step.py).
CPU_PEAK_FLOPS = 1.9e11


def detect_peak_flops(device: torch.device, gpu_name: Optional[str] = None) -> Optional[float]:
    """Peak FLOP/s of one ``device``; None (with a warning) for a GPU not in the table."""
    if device.type != "cuda":
        return CPU_PEAK_FLOPS
    name = gpu_name if gpu_name is not None else torch.cuda.get_device_name(device)
    spec = match_gpu(name)
    if spec is None:
        print(f"eurotron: warning: unknown GPU {name!r}: its peak FLOP/s is not known, so MFU is reported as null; "
              f"set cluster.peak_flops=<dense bf16 FLOP/s of one GPU> to get it", file=sys.stderr, flush=True)
        return None
    return spec.bf16_peak_flops


@functools.lru_cache(maxsize=8)
def _resolved(configured: Optional[float], device: torch.device) -> Optional[float]:
    return configured if configured is not None else detect_peak_flops(device)


def resolve_peak_flops(configured: Optional[float], device: torch.device) -> Optional[float]:
    """``cluster.peak_flops`` if set, else the detected peak of ``device`` (detected, and warned, once)."""
    return _resolved(configured, device)


def mfu(model_flops_per_s: float, configured_peak: Optional[float], device: torch.device,
        world_size: int = 1) -> Optional[float]:
    """Achieved model FLOP/s over all ranks divided by ``world_size`` peaks; None when no peak is known."""
    peak = resolve_peak_flops(configured_peak, device)
    return None if peak is None else model_flops_per_s / (peak * max(world_size, 1))
