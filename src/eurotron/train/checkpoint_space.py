"""Is there room for the next checkpoint? Asked before anything is written, so a full disk leaves
`latest` and the previous checkpoints as they were and no half-written temporary directory behind.

The expected size is the larger of the state's tensor bytes (each tensor counted once whatever the
layout: global sizes keyed by name, gathered over the ranks) and the previous checkpoint's size, plus a
margin for DCP's metadata, RNG states, config and tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .checkpoint_errors import NotEnoughSpaceError

MARGIN = 1.05
MARGIN_BYTES = 64 * 2**20


def tensor_bytes(state: Dict[str, Any], prefix: str = "") -> Dict[str, int]:
    """{name: bytes} of every tensor in a nested state dict (a DTensor counts with its global size)."""
    sizes: Dict[str, int] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            sizes.update(tensor_bytes(value, name + "."))
        elif isinstance(value, torch.Tensor):
            sizes[name] = value.numel() * value.element_size()
    return sizes


def directory_bytes(path: Optional[Path]) -> int:
    if path is None or not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def expected_bytes(state_bytes: int, previous: Optional[Path]) -> int:
    return int(max(state_bytes, directory_bytes(previous)) * MARGIN) + MARGIN_BYTES


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(directory: Path, need: int) -> None:
    """NotEnoughSpaceError when ``directory``'s file system has less than ``need`` bytes free."""
    free = shutil.disk_usage(_existing(Path(directory))).free
    if free < need:
        raise NotEnoughSpaceError(
            f"not enough space in {directory}: need {need / 1e9:.2f} GB, have {free / 1e9:.2f} GB for the next "
            f"checkpoint; `latest` and the existing checkpoints are untouched. Free space, lower "
            f"checkpoint.keep_last, or move run_dir to a larger file system"
        )
