"""Sharded safetensors output, streamed: each tensor goes to disk as soon as it is produced.

The safetensors format is ``<u64 little-endian header length><JSON header><raw tensor bytes>``, where
the header gives every tensor's dtype, shape and byte range. Because the converters know every
tensor's name, shape and dtype before reading any data (from the DCP metadata and the model config),
the header of each shard is written first and the tensors are appended one by one: the writer holds
no shard buffer, so memory stays at one tensor however large ``max_shard_size`` is.

Files follow transformers' naming (``model-00001-of-00004.safetensors``) plus
``model.safetensors.index.json`` (``metadata.total_size`` and ``weight_map``), which
``from_pretrained``, vLLM and llama.cpp's converter all read. The index is written even for a single
shard, so every output has the same layout.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .errors import ConvertError

INDEX_FILE = "model.safetensors.index.json"
DTYPE_CODES: Dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as transformers uses; ``GiB`` etc. are binary)."""
    if isinstance(text, int):
        return text
    raw = str(text).strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise ConvertError(f"cannot read the size {text!r}; write e.g. 5GB, 500MB, 2GiB or a number of bytes")
    return int(value * _UNITS[unit])


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(tensors: Sequence[PlannedTensor], max_shard_bytes: int) -> List[List[PlannedTensor]]:
    """Split in order into shards of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own)."""
    shards: List[List[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards if shards[0] else []


def shard_file_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def _header(tensors: Sequence[PlannedTensor], metadata: Dict[str, str]) -> bytes:
    header: Dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for tensor in tensors:
        if tensor.dtype not in DTYPE_CODES:
            raise ConvertError(f"{tensor.name}: dtype {tensor.dtype} cannot be stored in safetensors")
        end = offset + tensor.nbytes
        header[tensor.name] = {"dtype": DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                               "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # The data section starts 8-byte aligned (padding with spaces, as the reference writer does).
    return raw + b" " * (-len(raw) % 8)


Produced = Union[torch.Tensor, Iterable[torch.Tensor]]


def _write_tensor(handle, tensor: torch.Tensor) -> None:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel():
        handle.write(memoryview(flat.view(torch.uint8).numpy()))


def _write_produced(handle, planned: PlannedTensor, produced: Produced) -> None:
    """Write one tensor given whole or as consecutive blocks of rows, checking shape and dtype."""
    whole = isinstance(produced, torch.Tensor)
    blocks = [produced] if whole else produced
    rows = 0
    for block in blocks:
        shape_ok = tuple(block.shape) == planned.shape if whole else (
            block.dim() == len(planned.shape) and tuple(block.shape[1:]) == planned.shape[1:])
        if not shape_ok or block.dtype != planned.dtype:
            raise ConvertError(f"{planned.name}: got {tuple(block.shape)} {block.dtype}, expected "
                               f"{planned.shape} {planned.dtype}")
        _write_tensor(handle, block)
        rows += block.shape[0] if block.dim() else 1
        del block
    expected_rows = planned.shape[0] if planned.shape else 1
    if rows != expected_rows:
        raise ConvertError(f"{planned.name}: got {rows} rows, expected {expected_rows}")


def write_sharded(
    out_dir: Path,
    tensors: Sequence[PlannedTensor],
    produce: Callable[[PlannedTensor], Produced],
    max_shard_bytes: int,
    metadata: Optional[Dict[str, str]] = None,
    on_tensor: Optional[Callable[[PlannedTensor], None]] = None,
) -> Dict[str, object]:
    """Write ``tensors`` (asking ``produce`` for each, in order) as shards plus the index; return the index.

    ``produce`` returns the tensor, or an iterable of consecutive row blocks of it (written as they
    come, so a large tensor never needs to be in memory whole). Every tensor or block is checked against
    the planned shape and dtype before it is written.
    """
    if sys.byteorder != "little":
        raise ConvertError("safetensors files are little-endian; converting on a big-endian machine is not supported")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ConvertError("duplicate tensor names in the output plan: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    shards = plan_shards(tensors, max_shard_bytes)
    meta = {"format": "pt", **(metadata or {})}
    weight_map: Dict[str, str] = {}
    for index, shard in enumerate(shards):
        file_name = shard_file_name(index, len(shards))
        header = _header(shard, meta)
        path = Path(out_dir) / file_name
        with open(path, "wb") as handle:
            handle.write(len(header).to_bytes(8, "little"))
            handle.write(header)
            for planned in shard:
                _write_produced(handle, planned, produce(planned))
                weight_map[planned.name] = file_name
                if on_tensor is not None:
                    on_tensor(planned)
        expected = 8 + len(header) + sum(t.nbytes for t in shard)
        if path.stat().st_size != expected:
            raise ConvertError(f"{path} has {path.stat().st_size} bytes, expected {expected}")
    index_doc = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    (Path(out_dir) / INDEX_FILE).write_text(json.dumps(index_doc, indent=2) + "\n")
    return index_doc
