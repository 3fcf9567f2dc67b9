"""Atomic, sharded checkpoints in torch.distributed.checkpoint (DCP) format.

Layout of one checkpoint, `<run_dir>/checkpoints/step_<N>/`:
  model_optim/   DCP shards of model and optimizer state, keyed by fully-qualified parameter
                 names, so they load into any other parallel layout
  trainer.json   step, global data position, tokens seen, scheduler state
  rng/rank_<r>.pt  each rank's RNG states
  config.yaml    the resolved run config
  tokenizer/     the tokenizer the data was prepared with
  checksums.json size and sha256 of every file above (checkpoint_integrity.py), verified on load
  hf/            with checkpoint.export_hf_every: the same weights in Hugging Face format, written
                 after the commit by rank 0 (hf_export.py; not in checksums.json)
Everything is written into `.tmp_step_<N>` and renamed into place; `latest` is updated last, so a
crash mid-save never leaves a checkpoint that looks complete. With ``async_save`` the shards are
written by DCP in a background thread from a copy in host memory; the checksums, the rename and
`latest` follow only once every rank's write finished (checkpoint_async.py).

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
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

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

from ..parallel.env import barrier, is_main_process
from .checkpoint_async import PendingSave, SaveWriter, write_text_atomic
from .checkpoint_errors import CheckpointError, CorruptCheckpointError, NotEnoughSpaceError  # noqa: F401
from .checkpoint_integrity import verify_checkpoint
from .checkpoint_retention import LATEST, STEP_PREFIX, TRAINER_FILE, complete_checkpoints
from .checkpoint_space import check_free_space, expected_bytes, tensor_bytes

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


class CheckpointManager:
    def __init__(self, checkpoint_root: Path, keep_last: int, tokenizer_dir: Optional[Path] = None,
                 async_save: bool = False, on_commit: Optional[Callable[[int, Path], None]] = None) -> None:
        """Collective when ``async_save`` under a process group (it creates the writer's gloo group).
        ``on_commit(step, step_dir)``: called on rank 0 once a checkpoint is complete, before pruning."""
        self.root = Path(checkpoint_root)
        self.keep_last = keep_last
        # Copied into every checkpoint so one step directory is enough to generate or convert.
        self.tokenizer_dir = tokenizer_dir
        self.writer = SaveWriter(self.root, keep_last, async_save, on_commit)

    def save(self, step: int, model: Parts, optimizer: Optimizers,
             trainer_state: Dict[str, Any], config_yaml: str, state: Optional[Dict[str, Any]] = None) -> Path:
        """Write one checkpoint (collective: every rank calls it with the model parts it holds). With
        async_save it returns once the state is copied to host memory; `wait` commits it. ``state``: the
        model/optim tensors already in this layout-free form (DeepSpeed: checkpoint_deepspeed.py)."""
        self.wait()  # at most one save in flight
        final = step_dir(self.root, step)
        tmp = self.root / f".tmp_{final.name}"
        parts, optimizers = _as_list(model), _as_list(optimizer)
        if state is None:
            state = {"model": {}, "optim": {}}
            for part, opt in zip(parts, optimizers):
                state["model"].update(get_model_state_dict(part))
                state["optim"].update(optimizer_state(part, opt))
        self._check_space(state)
        if is_main_process():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "rng").mkdir()
        barrier()
        try:
            torch.save(rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
            if is_main_process():
                (tmp / CONFIG_FILE).write_text(config_yaml)
                if self.tokenizer_dir is not None:
                    shutil.copytree(self.tokenizer_dir, tmp / TOKENIZER_DIR)
                write_text_atomic(tmp / TRAINER_FILE, json.dumps({"step": step, **trainer_state}, indent=2))
        except OSError as err:  # e.g. the disk filled up anyway: no half-written directory stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"checkpoint {final} was not written ({err}); `latest` is unchanged") from err
        self.writer.start(PendingSave(step, tmp, final), state, SHARDS_DIR)
        return final

    def wait(self) -> Optional[Path]:
        """Finish the save in flight, if any: every rank's write, checksums, rename, `latest`, pruning.
        Collective; raises CheckpointError on every rank when any rank's write failed."""
        return self.writer.wait()

    def _check_space(self, state: Dict[str, Any]) -> None:
        """Refuse (on every rank alike) before writing when the file system cannot hold the checkpoint."""
        sizes = tensor_bytes(state)
        if dist.is_initialized():  # each tensor once, whatever the layout: union of names over ranks
            gathered: List[Optional[Dict[str, int]]] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, sizes)
            sizes = {k: v for part in gathered for k, v in (part or {}).items()}
        verdict: List[Optional[str]] = [None]
        if is_main_process():
            ckpts = complete_checkpoints(self.root)
            try:
                check_free_space(self.root, expected_bytes(sum(sizes.values()), ckpts[-1][1] if ckpts else None))
            except CheckpointError as err:
                verdict[0] = str(err)
        if dist.is_initialized():
            dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise NotEnoughSpaceError(verdict[0])


def load_checkpoint(path: Path, model: Parts, optimizer: Optimizers, verify: bool = True) -> Dict[str, Any]:
    """Load model (and optimizer) state into the live objects, whatever layout wrote the checkpoint;
    returns trainer.json's contents. ``model``/``optimizer``: one, or this rank's parts (one optimizer
    per part). Collective under a process group; every rank holds the same number of parts.
    ``verify``: check the files against checksums.json first (CorruptCheckpointError names a bad one)."""
    path = Path(path)
    trainer_file = path / TRAINER_FILE
    if not trainer_file.exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {TRAINER_FILE})")
    if verify:
        verify_checkpoint(path)
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
