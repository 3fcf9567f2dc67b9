"""Atomic, sharded checkpoints in torch.distributed.checkpoint (DCP) format.

Layout of one checkpoint, `<run_dir>/checkpoints/step_<N>/`:
  model_optim/   DCP shards of model and optimizer state, keyed by fully-qualified parameter
                 names, so they load into any other parallel layout
  trainer.json   step, global data position, tokens seen, scheduler state
  rng/rank_<r>.pt  each rank's RNG states
  config.yaml    the resolved run config
  tokenizer/     the tokenizer the data was prepared with
Everything is written into `.tmp_step_<N>` and renamed into place; `latest` is updated last, so a
crash mid-save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..errors import UserError
from ..parallel.env import barrier, is_main_process

LATEST = "latest"
STEP_PREFIX = "step_"
TRAINER_FILE = "trainer.json"
CONFIG_FILE = "config.yaml"
SHARDS_DIR = "model_optim"
TOKENIZER_DIR = "tokenizer"


# DCP warns on every single-process save/load; a single process is a supported layout here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing or incomplete; the message says which and what to do."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(checkpoint_root: Path, step: int) -> Path:
    return checkpoint_root / f"{STEP_PREFIX}{step:08d}"


def latest_checkpoint(checkpoint_root: Path) -> Optional[Path]:
    """The checkpoint named by `latest`, or None when there is none yet."""
    pointer = checkpoint_root / LATEST
    if not pointer.exists():
        return None
    target = checkpoint_root / pointer.read_text().strip()
    if not (target / TRAINER_FILE).exists():
        raise CheckpointError(
            f"{pointer} names {target.name}, which is missing or incomplete; point `latest` at an existing "
            f"step_* directory or set checkpoint.resume=never"
        )
    return target


def resolve_checkpoint(path: Path) -> Path:
    """Accept a run directory, a checkpoints/ directory or one step directory."""
    path = Path(path)
    if (path / TRAINER_FILE).exists():
        return path
    for root in (path / "checkpoints", path):
        if (root / LATEST).exists():
            found = latest_checkpoint(root)
            if found is not None:
                return found
    raise CheckpointError(f"no eurotron checkpoint at {path}: expected a run dir, its checkpoints/ or a step_* dir")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CheckpointManager:
    def __init__(self, checkpoint_root: Path, keep_last: int, tokenizer_dir: Optional[Path] = None) -> None:
        self.root = Path(checkpoint_root)
        self.keep_last = keep_last
        # Copied into every checkpoint so one step directory is enough to generate or convert.
        self.tokenizer_dir = tokenizer_dir

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             trainer_state: Dict[str, Any], config_yaml: str) -> Path:
        final = step_dir(self.root, step)
        tmp = self.root / f".tmp_{final.name}"
        if is_main_process():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "rng").mkdir()
        barrier()
        state = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, optimizer),
        }
        dcp.save(state, checkpoint_id=str(tmp / SHARDS_DIR))
        torch.save(rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
        barrier()
        if is_main_process():
            (tmp / CONFIG_FILE).write_text(config_yaml)
            if self.tokenizer_dir is not None:
                shutil.copytree(self.tokenizer_dir, tmp / TOKENIZER_DIR)
            _write_text_atomic(tmp / TRAINER_FILE, json.dumps({"step": step, **trainer_state}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_text_atomic(self.root / LATEST, final.name + "\n")
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        steps: List[Path] = sorted(p for p in self.root.glob(f"{STEP_PREFIX}*") if p.is_dir())
        for old in steps[: max(len(steps) - self.keep_last, 0)]:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> Dict[str, Any]:
    """Load model (and optimizer) state into the live objects; returns trainer.json's contents."""
    path = Path(path)
    trainer_file = path / TRAINER_FILE
    if not trainer_file.exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {TRAINER_FILE})")
    state: Dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=str(path / SHARDS_DIR))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    rng_file = path / "rng" / f"rank_{_rank()}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads(trainer_file.read_text())
