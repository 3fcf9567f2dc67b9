"""What a resumed run may change relative to the checkpoint it resumes, and how.

- The model must be the one that was trained: a shape difference (layers, widths, heads, vocabulary, tied
  embeddings) or a difference in what the weights compute (RoPE, norm epsilon) is refused, naming every
  differing key; the checkpoint must hold exactly the model's tensors.
- Optimizer and schedule settings (lr, betas, eps, weight decay, the schedule's kind, warmup, floor and
  cooldown, train.steps) may change: the new values apply from the resumed step on — the schedule is
  evaluated with the new settings at that step, as if the run had used them from the start — and every
  change is printed and returned so the trainer records it in metrics.jsonl with its step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from ..config import ConfigError, ModelConfig, TrainConfig, load_config_file, to_object
from .init_from import BEHAVIOUR_FIELDS, SHAPE_FIELDS
from .schedule import lr_multiplier

# Model keys a resume refuses to change ("family" only names the HF export and may change).
RESUME_MODEL_KEYS = (*SHAPE_FIELDS, "head_dim", *(f for f in BEHAVIOUR_FIELDS if f != "family"))
# Settings applied from the resumed step on when they differ from the checkpoint's.
OPTIMIZER_KEYS = ("optim.lr", "optim.beta1", "optim.beta2", "optim.eps", "optim.weight_decay", "optim.grad_clip")
SCHEDULE_KEYS = ("scheduler.name", "scheduler.warmup_steps", "scheduler.min_lr_ratio", "scheduler.decay_fraction",
                 "scheduler.decay_shape", "train.steps")
# Hyperparameters the optimizer keeps in its param groups (restored from the checkpoint, so re-set here).
_GROUP_KEYS = ("betas", "eps", "weight_decay")


@dataclass(frozen=True)
class SettingChange:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def checkpoint_train_config(ckpt: Path) -> TrainConfig:
    """The run config saved in a checkpoint (config.yaml), typed; a broken file is one ConfigError."""
    raw = load_config_file(Path(ckpt) / "config.yaml", "checkpoint config")
    try:
        return to_object(raw, TrainConfig)
    except ConfigError as err:
        raise ConfigError(f"{Path(ckpt) / 'config.yaml'}: {err}") from None


def _model_value(cfg: ModelConfig, key: str) -> Any:
    return cfg.resolved_head_dim if key == "head_dim" else getattr(cfg, key)


def check_same_model(ours: TrainConfig, theirs: TrainConfig, ckpt: Path) -> None:
    differing = [k for k in RESUME_MODEL_KEYS if _model_value(ours.model, k) != _model_value(theirs.model, k)]
    if differing:
        detail = "\n  ".join(f"model.{k}={_model_value(ours.model, k)!r} here but "
                             f"{_model_value(theirs.model, k)!r} in the checkpoint" for k in differing)
        raise ConfigError(
            f"cannot resume from {ckpt}: the model differs from the one it trained\n  {detail}\n"
            f"Resume with the checkpoint's model settings (drop these overrides), or start a new run in another "
            f"run_dir (train.init_from={ckpt} starts a new run from its weights)")


def check_checkpoint_keys(shard_keys: Sequence[str], model_cfg: ModelConfig, ckpt: Path) -> None:
    """The checkpoint's model tensors are exactly this model's: none missing, none left unread."""
    from ..model import build_model

    expected = set(build_model(model_cfg, device="meta").state_dict().keys())
    found = {k[len("model."):] for k in shard_keys if k.startswith("model.")}
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = ([f"missing {len(missing)} tensor(s) the model needs (e.g. {', '.join(missing[:3])})"] if missing else []) \
            + ([f"{len(extra)} tensor(s) the model has no place for (e.g. {', '.join(extra[:3])})"] if extra else [])
        raise ConfigError(f"checkpoint {ckpt} does not match the model: {'; '.join(parts)}; resume with the model "
                          f"config it was saved with ({ckpt / 'config.yaml'})")


def checkpoint_tensor_keys(ckpt: Path) -> List[str]:
    """The state-dict keys a checkpoint's DCP shards hold (from its metadata file; no tensor is read)."""
    import torch.distributed.checkpoint as dcp

    from .checkpoint import SHARDS_DIR

    return list(dcp.FileSystemReader(str(Path(ckpt) / SHARDS_DIR)).read_metadata().state_dict_metadata)


def _get(cfg: TrainConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def setting_changes(ours: TrainConfig, theirs: TrainConfig) -> List[SettingChange]:
    return [SettingChange(k, _get(theirs, k), _get(ours, k)) for k in (*OPTIMIZER_KEYS, *SCHEDULE_KEYS)
            if _get(theirs, k) != _get(ours, k)]


def apply_settings(optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any],
                   fresh_groups: Sequence[List[Dict[str, Any]]], cfg: TrainConfig, step: int) -> None:
    """Re-apply this config's optimizer settings over the restored state (which carries the checkpoint's):
    the param groups' betas/eps/weight decay as the optimizer was built, and the lr of the new schedule
    at ``step``. ``fresh_groups``: each optimizer's param-group settings captured before loading."""
    multiplier = lr_multiplier(cfg.scheduler, cfg.train.steps)(step)
    for optimizer, scheduler, fresh in zip(optimizers, schedulers, fresh_groups):
        for group, built in zip(optimizer.param_groups, fresh):
            for key in _GROUP_KEYS:
                group[key] = built[key]
            group["initial_lr"] = built["initial_lr"]
            group["lr"] = built["initial_lr"] * multiplier
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def group_settings(optimizer: torch.optim.Optimizer) -> List[Dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
