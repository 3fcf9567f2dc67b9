"""Hugging Face Llama / Mistral / Apertus directory -> eurotron checkpoint for ``train.init_from``.

Output (``CKPT_DIR``), laid out like one step directory of a run so every eurotron tool reads it::

    model_optim/                  DCP, model tensors only (fp32, the trainer's master weights)
    trainer.json                  step 0, tokens seen 0, where it came from
    config.yaml                   a run config whose ``model`` section matches the weights; its
                                  ``model.hf`` holds the source's special ids, dtype and generation config
    configs/model/<name>.yaml     the same model config as a Hydra option (see ``usage``)
    tokenizer/                    the model's tokenizer files (+ eurotron_tokenizer.json)

Tensors are read and written one at a time. The HF config and tensor list are checked first:
an unknown architecture, an unsupported feature (biases, another activation or RoPE type), a missing
or unexpected tensor or a shape that disagrees with config.json stops the conversion with a message.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from ..config import DataConfig, ModelConfig, TrainConfig
from ..train.checkpoint import CONFIG_FILE, SHARDS_DIR, TOKENIZER_DIR, TRAINER_FILE
from ..train.checkpoint_integrity import write_manifest
from .dcp_writer import write_model_checkpoint
from .dtypes import hf_dtype_name
from .errors import ConvertError
from .families import IGNORED_HF_SUFFIXES, Family, TensorSpec, hf_constants, model_config_from_hf, tensor_specs
from .hf_metadata import metadata_from_hf
from .hf_reader import HFCheckpoint, resolve_hf_dir
from .output import progress_bar, staged_output_dir
from .to_hf import EUROTRON_TOKENIZER_META

MODEL_CONFIG_DIR = Path("configs") / "model"
# Relative tolerance for the xIELU constants (the Hub stores them in bf16).
_CONSTANT_RTOL = 1e-2


@dataclass
class FromHFResult:
    ckpt_dir: Path
    family: str
    model_name: str
    num_tensors: int
    num_params: int
    warnings: List[str] = field(default_factory=list)

    @property
    def model_config_file(self) -> Path:
        return self.ckpt_dir / MODEL_CONFIG_DIR / f"{self.model_name}.yaml"

    def usage(self) -> str:
        configs = (self.ckpt_dir / "configs").resolve()
        return (f"eurotron-train 'hydra.searchpath=[file://{configs}]' model={self.model_name} "
                f"train.init_from={self.ckpt_dir.resolve()} data.path=...")


def default_model_name(source: str | Path) -> str:
    name = re.sub(r"[^0-9a-zA-Z]+", "_", Path(str(source).rstrip("/")).name).strip("_").lower()
    return name or "hf_model"


def check_hf_tensors(src: HFCheckpoint, specs: List[TensorSpec], cfg: ModelConfig, family: Family) -> None:
    """Every tensor the config implies present with the implied shape; no tensor left unmapped."""
    problems: List[str] = []
    for spec in specs:
        if spec.hf not in src:
            problems.append(f"missing {spec.hf}")
        elif src.shape(spec.hf) != tuple(spec.shape):
            problems.append(f"{spec.hf} has shape {list(src.shape(spec.hf))}, config.json implies {list(spec.shape)}")
    constants = dict(hf_constants(cfg))
    for name, value in constants.items():
        if name in src:
            stored = float(src.read(name).float().reshape(-1)[0])
            if abs(stored - value) > _CONSTANT_RTOL * abs(value):
                problems.append(f"{name} = {stored:g}; eurotron's xIELU fixes it at {value:g}")
    known = {s.hf for s in specs} | set(constants)
    if cfg.tie_embeddings:
        known.add("lm_head.weight")  # some checkpoints store the tied head anyway; the embedding is used
    problems += [f"unexpected tensor {name} (not part of {family.architecture} as eurotron maps it)"
                 for name in src.names() if name not in known and not name.endswith(IGNORED_HF_SUFFIXES)]
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ConvertError(f"{src.dir} does not match its config.json ({family.architecture}):\n  {shown}")


def _weight_dtype(src: HFCheckpoint, specs: List[TensorSpec]) -> Optional[str]:
    """The dtype all the source's weights are stored in (None when they differ: config.json's is used)."""
    codes = {src.dtype_code(s.hf) for s in specs if not s.tied}
    return hf_dtype_name(codes.pop()) if len(codes) == 1 else None


def _copy_tokenizer(src: HFCheckpoint, out: Path) -> List[str]:
    files = src.tokenizer_files()
    if not files:
        return [f"{src.dir} has no tokenizer files: the checkpoint has none (prepare data with an explicit "
                f"tokenizer.path)"]
    out.mkdir()
    for file in files:
        shutil.copy2(file, out / file.name)
    from ..data.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.load(out)
    except Exception as err:  # noqa: BLE001 - any failure only costs the metadata file
        return [f"the tokenizer was copied but eurotron cannot load it ({err})"]
    meta = {"kind": tokenizer.kind, **tokenizer.special_ids()}
    (out / EUROTRON_TOKENIZER_META).write_text(json.dumps(meta, indent=2) + "\n")
    return []


def _config_yaml(model_cfg: ModelConfig, source: str) -> str:
    run = TrainConfig(name=model_cfg.name, model=model_cfg, data=DataConfig(path=""))
    header = (f"# Written by eurotron-convert from-hf from {source}. Only `model` describes these weights;\n"
              f"# the other groups are defaults (data.path is empty: these weights were not trained by eurotron).\n")
    return header + OmegaConf.to_yaml(OmegaConf.structured(run))


def _model_yaml(model_cfg: ModelConfig, source: str) -> str:
    header = (f"# Model config of {source}, written by eurotron-convert from-hf. Use it as the model group:\n"
              f"#   eurotron-train 'hydra.searchpath=[file://<this checkpoint>/configs]' model={model_cfg.name} "
              f"train.init_from=<this checkpoint>\n# or copy this file into eurotron's configs/model/.\n")
    return header + OmegaConf.to_yaml(OmegaConf.structured(model_cfg))


def convert_from_hf(
    source: str | Path,
    ckpt_dir: Path | str,
    name: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[bool] = True,
) -> FromHFResult:
    """Convert the HF model at ``source`` (local directory or Hub id) into the eurotron checkpoint ``ckpt_dir``."""
    src = HFCheckpoint(resolve_hf_dir(source))
    model_name = name or default_model_name(source)
    model_cfg, family, warnings = model_config_from_hf(src.config, model_name)
    specs = tensor_specs(model_cfg)
    check_hf_tensors(src, specs, model_cfg, family)
    # Special ids, dtype and generation defaults travel in model.hf to every later to-hf (hf_metadata.py).
    model_cfg.hf = metadata_from_hf(src.config, src.generation_config, _weight_dtype(src, specs),
                                    str(src.dir / "config.json"))

    shapes: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {s.ours: (tuple(s.shape), torch.float32) for s in specs}
    hf_names = {s.ours: s.hf for s in specs}

    def produce(ours: str) -> torch.Tensor:
        return src.read(hf_names[ours]).to(torch.float32)

    total = sum(torch.Size(shape).numel() * 4 for shape, _ in shapes.values())
    with staged_output_dir(Path(ckpt_dir), overwrite) as staging:
        with progress_bar(total, f"from-hf {Path(str(source)).name}", progress) as bar:
            write_model_checkpoint(staging / SHARDS_DIR, shapes, produce, on_tensor=lambda _, n: bar.update(n))
        warnings += _copy_tokenizer(src, staging / TOKENIZER_DIR)
        (staging / CONFIG_FILE).write_text(_config_yaml(model_cfg, str(source)))
        model_yaml = staging / MODEL_CONFIG_DIR / f"{model_name}.yaml"
        model_yaml.parent.mkdir(parents=True)
        model_yaml.write_text(_model_yaml(model_cfg, str(source)))
        trainer_state = {"step": 0, "tokens_seen": 0, "converted_from": str(source),
                         "hf_architecture": family.architecture}
        (staging / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        write_manifest(staging, {})  # checksums, as the trainer's checkpoints carry
    num_params = sum(torch.Size(s.shape).numel() for s in specs if not s.tied)
    return FromHFResult(Path(ckpt_dir), family.name, model_name, len(specs), num_params, warnings)
