"""eurotron DCP checkpoint (any parallel layout) -> Hugging Face directory, one tensor at a time.

Output: ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``, ``config.json``,
``generation_config.json`` (special ids, dtype and generation defaults: hf_metadata.py, dtypes.py), the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json`` and the SentencePiece ``tokenizer.model`` when there is one) and a model card
``README.md``. Every tensor of the checkpoint is checked against the shapes the model config implies
before anything is written; a tensor the mapping does not know is an error, never silently dropped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import ModelConfig, load_config_file
from ..train.checkpoint import CONFIG_FILE, SHARDS_DIR, TOKENIZER_DIR, TRAINER_FILE, resolve_checkpoint
from ..paths import ensure_writable_dir
from .dcp_reader import DCPTensorReader
from .dtypes import HF_NAMES, check_finite, export_dtype
from .errors import ConvertError
from .families import Family, TensorSpec, family_for_config, hf_config_dict, hf_constants, tensor_specs
from .hf_metadata import check_metadata, generation_config, special_token_ids
from .model_card import find_data_info, render_model_card
from .output import progress_bar, staged_output_dir
from .safetensors_writer import PlannedTensor, write_sharded
from .tied import check_tied_embeddings

# Tensors larger than this (in the output dtype) are read and written in blocks of rows, so peak memory
# is one stored chunk plus one block (see DCPTensorReader.read_blocks).
BLOCK_BYTES = 512 * 2**20
EUROTRON_TOKENIZER_META = "eurotron_tokenizer.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass
class ToHFResult:
    out_dir: Path
    family: str
    dtype: str  # bf16 | fp16 | fp32
    num_tensors: int
    num_params: int
    total_bytes: int
    shards: int
    warnings: List[str]


def load_run_config(ckpt: Path) -> Tuple[ModelConfig, Optional[DictConfig]]:
    """The model config (and the whole run config) saved next to a checkpoint."""
    file = ckpt / CONFIG_FILE
    if not file.is_file():
        raise ConvertError(f"{ckpt} has no {CONFIG_FILE}; the model config is needed to name and check the tensors")
    raw = load_config_file(file, "checkpoint config")
    if "model" not in raw:
        raise ConvertError(f"{file} has no model section")
    try:
        model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw.model))
    except Exception as err:  # omegaconf's validation errors name the key
        raise ConvertError(f"{file}: the model section is not a valid eurotron model config ({err})") from None
    return model_cfg, raw


def check_tensors(reader: DCPTensorReader, specs: List[TensorSpec], cfg: ModelConfig) -> None:
    """Every expected tensor present with its config-implied shape, and nothing unexpected."""
    expected = {s.ours: s.shape for s in specs}
    problems: List[str] = []
    for name, shape in expected.items():
        if name not in reader:
            problems.append(f"missing {name}")
        elif reader.shape(name) != tuple(shape):
            problems.append(f"{name} has shape {list(reader.shape(name))}, the config implies {list(shape)}")
    problems += [f"unexpected tensor {name} (no Hugging Face mapping)" for name in reader.names() if name not in expected]
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ConvertError(
            f"checkpoint {reader.path} does not match its model config ({cfg.name}: {cfg.num_layers} layers, "
            f"hidden {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads}, vocab {cfg.vocab_size}):\n  {shown}"
        )


def _special_ids(tokenizer_dir: Path) -> Optional[Dict[str, int]]:
    meta = tokenizer_dir / EUROTRON_TOKENIZER_META
    if meta.is_file():
        return json.loads(meta.read_text())
    return None


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> List[str]:
    """Copy the tokenizer files transformers reads; add ``special_tokens_map.json`` for older readers."""
    if not tokenizer_dir.is_dir():
        return []
    copied = []
    for file in sorted(tokenizer_dir.iterdir()):
        if file.is_file() and file.name != EUROTRON_TOKENIZER_META:
            shutil.copy2(file, out_dir / file.name)
            copied.append(file.name)
    config_file = out_dir / "tokenizer_config.json"
    special_map = out_dir / "special_tokens_map.json"
    if config_file.is_file() and not special_map.exists():
        config = json.loads(config_file.read_text())
        specials = {k: config[k] for k in _SPECIAL_KEYS if isinstance(config.get(k), (str, dict))}
        special_map.write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
        copied.append(special_map.name)
    return copied


def _data_path(run_config: Optional[DictConfig]) -> Optional[str]:
    try:
        value = OmegaConf.select(run_config, "data.path") if run_config is not None else None
    except Exception:  # a missing (???) or unresolvable value: no data directory to look at
        return None
    return value if isinstance(value, str) and value else None


def convert_to_hf(
    checkpoint: Path | str,
    out_dir: Path | str,
    dtype: Optional[str] = None,
    max_shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    progress: Optional[bool] = True,
    block_bytes: int = BLOCK_BYTES,
    verify: bool = True,
) -> ToHFResult:
    """Convert the checkpoint at ``checkpoint`` (run dir, checkpoints/ or step dir) into ``out_dir``.

    ``dtype``: bf16 | fp16 | fp32; None: the dtype the model was imported in (``model.hf.dtype``), else
    bf16 (dtypes.py). ``verify=False`` skips the checksums (the trainer exports a checkpoint it has just
    written and hashed)."""
    ensure_writable_dir(Path(out_dir).parent, "output directory", out_dir)  # before minutes of reading
    ckpt = resolve_checkpoint(Path(checkpoint))
    model_cfg, run_config = load_run_config(ckpt)
    check_metadata(model_cfg.hf, str(ckpt / CONFIG_FILE))
    dtype, out_dtype = export_dtype(dtype, model_cfg)
    family: Family = family_for_config(model_cfg)
    specs = tensor_specs(model_cfg)
    reader = DCPTensorReader(ckpt / SHARDS_DIR, verify=verify)
    check_tied_embeddings(reader, model_cfg, ckpt / CONFIG_FILE)
    check_tensors(reader, specs, model_cfg)

    by_hf = {s.hf: s for s in specs if not s.tied}
    constants = dict(hf_constants(model_cfg))
    plan = [PlannedTensor(s.hf, tuple(s.shape), out_dtype) for s in specs if not s.tied]
    plan += [PlannedTensor(name, (), out_dtype) for name in constants]
    total = sum(t.nbytes for t in plan)

    def produce(planned: PlannedTensor):  # noqa: ANN202 - a tensor or its row blocks
        if planned.name in constants:
            return torch.tensor(constants[planned.name], dtype=out_dtype)
        ours = by_hf[planned.name].ours

        def source_max() -> float:  # only when a value overflowed: the largest magnitude as stored
            return max(float(b.abs().max()) for b in reader.read_blocks(ours, torch.float32, block_bytes))

        blocks = reader.read_blocks(ours, dtype=out_dtype, max_block_bytes=block_bytes)
        return check_finite(f"{planned.name} ({ours})", blocks, out_dtype, source_max)

    tokenizer_dir = ckpt / TOKENIZER_DIR
    tokenizer_ids = _special_ids(tokenizer_dir)
    token_ids, warnings = special_token_ids(model_cfg.hf, tokenizer_ids)
    trainer_file = ckpt / TRAINER_FILE
    trainer_state = json.loads(trainer_file.read_text()) if trainer_file.is_file() else None
    data = find_data_info(_data_path(run_config))
    num_params = sum(torch.Size(s.shape).numel() for s in specs if not s.tied)

    with staged_output_dir(Path(out_dir), overwrite) as staging:
        with progress_bar(total, f"to-hf {ckpt.name}", progress) as bar:
            index = write_sharded(staging, plan, produce, max_shard_size,
                                  on_tensor=lambda t: bar.update(t.nbytes))
        config = hf_config_dict(model_cfg, HF_NAMES[out_dtype], token_ids)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = generation_config(model_cfg.hf, token_ids)
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        copy_tokenizer(tokenizer_dir, staging)
        for report_file in data.report_files:
            shutil.copy2(report_file, staging / f"data_{report_file.name}")
        card = render_model_card(model_cfg, family, num_params, HF_NAMES[out_dtype], str(ckpt),
                                 run_config, trainer_state, data)
        (staging / "README.md").write_text(card)
    if not tokenizer_dir.is_dir():
        warnings.append(f"{ckpt} has no {TOKENIZER_DIR}/: no tokenizer files written; copy them into {out_dir}")
    unknown = [key for key, value in token_ids.items() if value is None and key != "pad_token_id"]
    if unknown:
        warnings.append(f"config.json names no {' and no '.join(unknown)}: neither model.hf in {ckpt / CONFIG_FILE} "
                        f"nor {tokenizer_dir / EUROTRON_TOKENIZER_META} gives it")
    return ToHFResult(Path(out_dir), family.name, dtype, len(plan), num_params, total,
                      len(set(index["weight_map"].values())), warnings)
