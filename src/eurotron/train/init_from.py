"""``train.init_from``: start a run from another checkpoint's model weights (optimizer, schedule, data fresh).

Used for continued pre-training from a Hugging Face model (``eurotron-convert from-hf``) or from another
eurotron run. The weights are read through DCP into the model as it is already parallelised, so the
source may have been written by any layout and the new run may use any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from ..config import ConfigError, ModelConfig, load_config_file
from ..parallel.env import is_main_process
from .checkpoint import CONFIG_FILE, SHARDS_DIR, resolve_checkpoint
from .checkpoint_integrity import verify_checkpoint

# Fields that decide which tensors exist and their shapes: they must match the checkpoint's.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "mlp",
                "qk_norm", "tie_embeddings")
# Fields that change what the weights compute but not their shapes: a difference is allowed (e.g. a longer
# context with another RoPE theta) and reported.
BEHAVIOUR_FIELDS = ("family", "norm_eps", "rope_theta", "rope_scaling", "sliding_window")


def _source_model_config(ckpt: Path) -> ModelConfig | None:
    file = ckpt / CONFIG_FILE
    if not file.is_file():
        return None
    raw = load_config_file(file, "checkpoint config")
    if "model" not in raw:
        return None
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw.model))


def compare_model_configs(ours: ModelConfig, theirs: ModelConfig, init_from: str) -> List[str]:
    """Raise a ConfigError for shape-changing differences; return notes for the others."""
    def value(cfg: ModelConfig, key: str):  # noqa: ANN202
        return cfg.resolved_head_dim if key == "head_dim" else getattr(cfg, key)

    mismatched = [f for f in (*SHAPE_FIELDS, "head_dim") if value(ours, f) != value(theirs, f)]
    if mismatched:
        detail = ", ".join(f"model.{f}={value(ours, f)!r} here but {value(theirs, f)!r} there" for f in mismatched)
        raise ConfigError(
            f"train.init_from={init_from}: the model does not match the checkpoint's ({detail}); use the model "
            f"config saved with it (for an imported model: its configs/model/*.yaml via hydra.searchpath)"
        )
    notes = [f"model.{f}={getattr(ours, f)!r} differs from the checkpoint's {getattr(theirs, f)!r}"
             for f in BEHAVIOUR_FIELDS if getattr(ours, f) != getattr(theirs, f)]
    if ours.hf != theirs.hf:  # what to-hf writes besides the weights: ids, dtype, generation defaults
        notes.append(f"model.hf differs from the checkpoint's ({theirs.hf}); eurotron-convert to-hf will write "
                     f"this run's ({ours.hf}); use the model config saved with the checkpoint to keep its values")
    return notes


def load_initial_weights(
    model: Union[torch.nn.Module, Sequence[torch.nn.Module]], init_from: str, model_cfg: ModelConfig,
    load: Optional[Callable[[str], None]] = None,
) -> Path:
    """Load the model weights of the checkpoint ``init_from`` (run dir, checkpoints/ or step dir) into
    ``model`` (one module, or the model parts this rank holds) in place; returns the step directory.

    Collective under a process group: every rank calls it. RNG state and optimizer state are left alone.
    """
    ckpt = resolve_checkpoint(Path(init_from))
    if not (ckpt / SHARDS_DIR).is_dir():
        raise ConfigError(f"train.init_from={init_from}: {ckpt} has no {SHARDS_DIR}/ directory of weights")
    verify_checkpoint(ckpt)  # checksums first: a corrupt shard would load silently into garbage weights
    theirs = _source_model_config(ckpt)
    notes = compare_model_configs(model_cfg, theirs, init_from) if theirs is not None else []
    parts: Iterable[torch.nn.Module] = [model] if isinstance(model, torch.nn.Module) else list(model)
    if load is not None:  # DeepSpeed: the fp32 masters live in its partitions, not in the module
        load(str(ckpt / SHARDS_DIR))
        parts = []
    for part in parts:
        state = {"model": get_model_state_dict(part)}
        dcp.load(state, checkpoint_id=str(ckpt / SHARDS_DIR))
        set_model_state_dict(part, state["model"], options=StateDictOptions(strict=True))
    if is_main_process():
        print(f"initialised model weights from {ckpt} (optimizer and schedule start fresh)", flush=True)
        for note in notes:
            print(f"  note: {note}", flush=True)
    return ckpt
