"""Process identity and device selection, under torchrun, srun (one task per GPU) or plain python."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessEnv:
    rank: int
    local_rank: int
    world_size: int


def _int_env(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def process_env() -> ProcessEnv:
    """torchrun's RANK/LOCAL_RANK/WORLD_SIZE, else Slurm's SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return ProcessEnv(
            rank=_int_env("RANK", default=0),
            local_rank=_int_env("LOCAL_RANK", default=0),
            world_size=_int_env("WORLD_SIZE", default=1),
        )
    return ProcessEnv(
        rank=_int_env("SLURM_PROCID", default=0),
        local_rank=_int_env("SLURM_LOCALID", default=0),
        world_size=_int_env("SLURM_NTASKS", default=1),
    )


def select_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from ..config import ConfigError  # a user error: printed without a traceback

            raise ConfigError("cluster.device=cuda but no GPU is visible to this process (torch.cuda.is_available() "
                              "is False); use cluster.device=cpu or auto, or run on a GPU node with a CUDA build "
                              "of PyTorch")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
