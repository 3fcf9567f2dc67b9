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

Layout independence: every rank contributes the DTensor shards (TP, FSDP) or replicas it holds, under
the whole model's FQNs (a pipeline stage holds a subset of them; several stages on one rank are
merged). The optimizer state is saved *flattened* (``state.<fqn>.exp_avg``, ``param_groups.<fqn>.lr``),
so it is keyed per parameter rather than by the position of parameters in param groups, which differ
between layouts. A tied embedding is one parameter in a single stage but two copies under PP (the
first stage's ``tok_embeddings.weight``, the last's ``output.weight``); its optimizer state is always
stored under ``tok_embeddings.weight`` so any layout finds it. Loading asks DCP for exactly the shards
the new layout holds and DCP reads them from whatever files hold them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

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


Parts = Union[torch.nn.Module, Sequence[torch.nn.Module]]
Optimizers = Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer], None]
FLAT_OPTIM = StateDictOptions(flatten_optimizer_state_dict=True)
# The tied output projection's optimizer state is stored under the embedding's name (see above).
_TIED_COPY, _TIED_CANONICAL = "output.weight.", "tok_embeddings.weight."


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


def _as_list(items: Any) -> List[Any]:
    if items is None:
        return []
    return [items] if isinstance(items, (torch.nn.Module, torch.optim.Optimizer)) else list(items)


def _is_tied(part: torch.nn.Module) -> bool:
    inner = getattr(part, "module", part)  # DDP keeps the model in .module
    cfg = getattr(inner, "cfg", None)
    return bool(getattr(cfg, "tie_embeddings", False))


def _rename_tied(state: Dict[str, Any], part: torch.nn.Module, to_canonical: bool) -> Dict[str, Any]:
    """Flattened optimizer keys of a tied output copy <-> the embedding's keys."""
    if not _is_tied(part):
        return state
    src, dst = (_TIED_COPY, _TIED_CANONICAL) if to_canonical else (_TIED_CANONICAL, _TIED_COPY)
    renamed = {}
    for key, value in state.items():
        section, _, rest = key.partition(".")
        if rest.startswith(src) and (to_canonical or not _has_embedding(part)):
            key = f"{section}.{dst}{rest[len(src):]}"
        renamed[key] = value
    return renamed


def _has_embedding(part: torch.nn.Module) -> bool:
    return getattr(getattr(part, "module", part), "tok_embeddings", None) is not None


def optimizer_state(part: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The flattened, layout-independent optimizer state of one model part."""
    return _rename_tied(get_optimizer_state_dict(part, optimizer, options=FLAT_OPTIM), part, to_canonical=True)


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

    def save(self, step: int, model: Parts, optimizer: Optimizers,
             trainer_state: Dict[str, Any], config_yaml: str) -> Path:
        """Write one checkpoint (collective: every rank calls it with the model parts it holds)."""
        final = step_dir(self.root, step)
        tmp = self.root / f".tmp_{final.name}"
        if is_main_process():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "rng").mkdir()
        barrier()
        parts, optimizers = _as_list(model), _as_list(optimizer)
        state: Dict[str, Any] = {"model": {}, "optim": {}}
        for part, opt in zip(parts, optimizers):
            state["model"].update(get_model_state_dict(part))
            state["optim"].update(optimizer_state(part, opt))
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


def load_checkpoint(path: Path, model: Parts, optimizer: Optimizers) -> Dict[str, Any]:
    """Load model (and optimizer) state into the live objects, whatever layout wrote the checkpoint;
    returns trainer.json's contents. ``model``/``optimizer``: one, or this rank's parts (one optimizer
    per part). Collective under a process group; every rank holds the same number of parts."""
    path = Path(path)
    trainer_file = path / TRAINER_FILE
    if not trainer_file.exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {TRAINER_FILE})")
    parts, optimizers = _as_list(model), _as_list(optimizer)
    for i, part in enumerate(parts):
        opt = optimizers[i] if optimizers else None
        state: Dict[str, Any] = {"model": get_model_state_dict(part)}
        if opt is not None:
            state["optim"] = optimizer_state(part, opt)
        dcp.load(state, checkpoint_id=str(path / SHARDS_DIR))
        set_model_state_dict(part, state["model"], options=StateDictOptions(strict=True))
        if opt is not None:
            restored = _rename_tied(state["optim"], part, to_canonical=False)
            set_optimizer_state_dict(part, opt, restored, options=FLAT_OPTIM)
    rng_file = path / "rng" / f"rank_{_rank()}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads(trainer_file.read_text())
