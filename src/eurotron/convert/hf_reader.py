"""A Hugging Face model directory (config.json + safetensors shards), read one tensor at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .errors import ConvertError
from .safetensors_writer import INDEX_FILE

SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# Files of the tokenizer that travel with a model (whichever of them exist).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_hf_dir(source: str | Path) -> Path:
    """A local directory as is; an ``org/name`` Hub id is downloaded (config, safetensors, tokenizer)."""
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or not _HUB_ID.match(text):
        raise ConvertError(f"{source} is not a Hugging Face model directory (expected a directory with {CONFIG_FILE})")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=[CONFIG_FILE, GENERATION_CONFIG_FILE, "*.safetensors",
                                                            INDEX_FILE, *TOKENIZER_FILES]))
    except Exception as err:  # offline, gated, misspelt: all end the same way for the user
        raise ConvertError(
            f"{source} is not a local directory and downloading it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); download it first "
            f"(huggingface-cli download {source} --local-dir DIR) and pass DIR"
        ) from None


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConvertError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ConvertError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


class HFCheckpoint:
    """``config.json`` plus a name -> shard map over ``model.safetensors`` or an indexed shard set."""

    def __init__(self, directory: Path | str) -> None:
        from safetensors import safe_open

        self.dir = Path(directory)
        config_path = self.dir / CONFIG_FILE
        if not config_path.is_file():
            raise ConvertError(f"{self.dir} has no {CONFIG_FILE}: not a Hugging Face model directory")
        self.config: Dict[str, Any] = _read_json(config_path)
        generation = self.dir / GENERATION_CONFIG_FILE
        # Sampling defaults and stop ids, carried over verbatim (hf_metadata.py); None when absent.
        self.generation_config: Optional[Dict[str, Any]] = _read_json(generation) if generation.is_file() else None
        self._safe_open = safe_open
        self._handles: Dict[str, Any] = {}
        self.weight_map = self._weight_map()

    def _weight_map(self) -> Dict[str, str]:
        index = self.dir / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
            if not weight_map:
                raise ConvertError(f"{index} has an empty weight_map")
            missing = sorted({f for f in weight_map.values() if not (self.dir / f).is_file()})
            if missing:
                raise ConvertError(
                    f"{self.dir} is missing {len(missing)} of the shards its {INDEX_FILE} names: "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; download them too"
                )
            return dict(weight_map)
        if (self.dir / SINGLE_FILE).is_file():
            return {name: SINGLE_FILE for name in self._handle(SINGLE_FILE).keys()}
        if any(self.dir.glob("pytorch_model*.bin")):
            raise ConvertError(
                f"{self.dir} holds pytorch_model*.bin weights; eurotron reads safetensors only. Re-save with "
                f"transformers (model.save_pretrained(dir, safe_serialization=True)) and convert that"
            )
        raise ConvertError(f"{self.dir} has no {SINGLE_FILE} and no {INDEX_FILE}: no weights to convert")

    def _handle(self, file_name: str):
        if file_name not in self._handles:
            try:
                self._handles[file_name] = self._safe_open(str(self.dir / file_name), framework="pt")
            except Exception as err:
                raise ConvertError(f"cannot open {self.dir / file_name} as safetensors: {err}") from None
        return self._handles[file_name]

    def names(self) -> List[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def shape(self, name: str) -> tuple:
        return tuple(self._handle(self.weight_map[name]).get_slice(name).get_shape())

    def dtype_code(self, name: str) -> str:
        """The safetensors dtype code of a tensor (``BF16``, ``F16``, ``F32`` ...), from the header only."""
        return str(self._handle(self.weight_map[name]).get_slice(name).get_dtype())

    def read(self, name: str) -> torch.Tensor:
        handle = self._handle(self.weight_map[name])
        try:
            return handle.get_tensor(name)
        except Exception as err:
            raise ConvertError(f"{self.weight_map[name]} does not hold {name} as its index claims: {err}") from None

    def tokenizer_files(self) -> List[Path]:
        return [self.dir / name for name in TOKENIZER_FILES if (self.dir / name).is_file()]
