"""Read the model tensors of a DCP checkpoint one at a time, whatever layout wrote it, with no process group.

A DCP checkpoint's ``.metadata`` lists every tensor by fully-qualified name with its *global* shape
and the chunks each rank wrote (a TP shard, an FSDP slice, a whole tensor from a single process, a
pipeline stage's layers...). Loading a one-entry state dict ``{fqn: empty(global shape)}`` through DCP's
own planner makes DCP assemble that tensor from whichever chunks cover it, so the reader needs neither
the writer's world size nor its mesh. Only one tensor (plus the chunk being copied) is in memory at a
time, so memory is bounded by the largest tensor, not the model.

The target may have another dtype than the stored one: DCP copies each chunk into it with
``Tensor.copy_``, which converts in place (fp32 -> bf16 rounds to nearest even, exactly like
``tensor.to(torch.bfloat16)``) without a full-size fp32 copy of the result.

A large tensor can also be read in blocks of rows (``read_blocks``): each block is a one-chunk load
plan over only the rows it covers (DCP's own resharding helper picks the stored chunks that overlap),
so the memory is one stored chunk plus one block, not one chunk plus the whole tensor. With a
single-process checkpoint every block re-reads the one stored chunk (from the page cache); with a
sharded checkpoint each block touches only the chunks that overlap it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from ..train.checkpoint_integrity import MANIFEST, verify_checkpoint
from .errors import ConvertError

MODEL_PREFIX = "model."
METADATA_FILE = ".metadata"

# DCP warns on every load without an initialised process group; reading without one is the point here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class _CachedMetadataReader(FileSystemReader):
    """A FileSystemReader that unpickles ``.metadata`` once instead of on every per-tensor load."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self._metadata: Optional[Metadata] = None

    def read_metadata(self, *args, **kwargs) -> Metadata:  # noqa: ANN002, ANN003 - torch's signature
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


class _RowBlockPlanner(DefaultLoadPlanner):
    """Load rows ``[start, start + target.shape[0])`` of one tensor into a target of the block's shape."""

    def __init__(self, fqn: str, start: int, meta: TensorStorageMetadata, block_shape: torch.Size) -> None:
        super().__init__()
        self._fqn, self._start, self._meta, self._block_shape = fqn, start, meta, block_shape

    def create_local_plan(self) -> LoadPlan:
        offsets = torch.Size([self._start] + [0] * (len(self._block_shape) - 1))
        block = ChunkStorageMetadata(offsets=offsets, sizes=self._block_shape)
        return LoadPlan(create_read_items_for_chunk_list(self._fqn, self._meta, [block]))

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        # The read item's destination offsets are relative to the block.
        target = self.state_dict[self._fqn]
        for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            target = target.narrow(dim, offset, length)
        return target


class DCPTensorReader:
    """The tensors under ``prefix`` (``model.`` for eurotron's model state) of one DCP directory."""

    def __init__(self, path: Path | str, prefix: str = MODEL_PREFIX, verify: bool = True) -> None:
        self.path = Path(path)
        self.prefix = prefix
        if not (self.path / METADATA_FILE).is_file():
            what = "does not exist" if not self.path.exists() else f"has no {METADATA_FILE} file"
            raise ConvertError(
                f"{self.path} {what}: not a complete torch.distributed.checkpoint directory "
                f"(an interrupted save leaves no {METADATA_FILE}; use an earlier step)"
            )
        # A checkpoint around this directory with a manifest is verified first: a corrupt shard would
        # otherwise convert silently into garbage weights (DCP has no checksums of its own).
        if verify and ((self.path.parent / MANIFEST).is_file() or (self.path.parent / "trainer.json").is_file()):
            # One process reads everything here, so it verifies everything (no collective).
            verify_checkpoint(self.path.parent, collective=False)  # no manifest (older eurotron): warned once
        self._reader = _CachedMetadataReader(self.path)
        try:
            metadata = self._reader.read_metadata()
        except Exception as err:  # a truncated or foreign pickle
            raise ConvertError(f"cannot read {self.path / METADATA_FILE}: {err}") from err
        self._meta: Dict[str, TensorStorageMetadata] = {
            key[len(prefix):]: value
            for key, value in metadata.state_dict_metadata.items()
            if key.startswith(prefix) and isinstance(value, TensorStorageMetadata)
        }
        self._check_files(self._needed_files(metadata))

    def _needed_files(self, metadata: Metadata) -> Dict[str, int]:
        """{data file: bytes it must hold} for the tensors under the prefix."""
        needed: Dict[str, int] = {}
        for index, info in metadata.storage_data.items():
            if index.fqn.startswith(self.prefix):
                end = info.offset + info.length
                needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
        return needed

    def _check_files(self, needed: Dict[str, int]) -> None:
        """Every data file a model tensor lives in must exist and be long enough (missing shard check)."""
        problems: List[str] = []
        for name, end in sorted(needed.items()):
            file = self.path / name
            if not file.is_file():
                problems.append(f"{name} is missing")
            elif file.stat().st_size < end:
                problems.append(f"{name} is truncated ({file.stat().st_size} bytes, needs {end})")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ConvertError(
                f"checkpoint {self.path} is incomplete: {shown}. Copy the whole directory (every "
                f"__<rank>_<n>.distcp file the ranks wrote) or use another step"
            )

    # ------------------------------------------------------------------------------------- queries
    def names(self) -> List[str]:
        return list(self._meta)

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def shape(self, name: str) -> tuple:
        return tuple(self._meta[name].size)

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name].properties.dtype

    def nbytes(self, name: str) -> int:
        meta = self._meta[name]
        return meta.size.numel() * torch.empty((), dtype=meta.properties.dtype).element_size()

    def num_chunks(self, name: str) -> int:
        return len(self._meta[name].chunks)

    # ---------------------------------------------------------------------------------------- read
    def read(self, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The whole tensor ``name`` (global shape), converted to ``dtype`` while it is assembled."""
        if name not in self._meta:
            raise ConvertError(f"checkpoint {self.path} has no tensor {self.prefix}{name}")
        meta = self._meta[name]
        target = torch.empty(tuple(meta.size), dtype=dtype or meta.properties.dtype)
        dcp.load({self.prefix + name: target}, storage_reader=self._reader, no_dist=True)
        return target

    def read_blocks(self, name: str, dtype: Optional[torch.dtype] = None,
                    max_block_bytes: int = 512 * 2**20) -> Iterator[torch.Tensor]:
        """The tensor ``name`` as consecutive blocks of whole rows (dim 0), each at most ``max_block_bytes``
        in ``dtype`` (a single row may be larger); concatenated they are ``read(name, dtype)``."""
        if name not in self._meta:
            raise ConvertError(f"checkpoint {self.path} has no tensor {self.prefix}{name}")
        meta = self._meta[name]
        dtype = dtype or meta.properties.dtype
        size = meta.size
        row_bytes = size[1:].numel() * torch.empty((), dtype=dtype).element_size() if len(size) else 0
        if len(size) == 0 or size.numel() == 0 or size[0] * row_bytes <= max_block_bytes:
            yield self.read(name, dtype)
            return
        rows = max(1, max_block_bytes // max(row_bytes, 1))
        for start in range(0, size[0], rows):
            shape = torch.Size([min(rows, size[0] - start), *size[1:]])
            block = torch.empty(shape, dtype=dtype)
            planner = _RowBlockPlanner(self.prefix + name, start, meta, shape)
            dcp.load({self.prefix + name: block}, storage_reader=self._reader, planner=planner, no_dist=True)
            yield block
            del block
