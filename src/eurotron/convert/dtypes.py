"""The weight dtypes of a Hugging Face export: which one, and that no value is lost to overflow.

``--dtype`` names (bf16, fp16, fp32) map to torch dtypes and to the names config.json uses (bfloat16 ...).
Without ``--dtype`` the export takes the dtype the model was imported in (``model.hf.dtype``, recorded
by ``from-hf``), so an fp16 model (Llama-2) goes back to fp16 bitwise; a model trained from scratch
gets bf16.

Narrowing is rounding, which is a normal choice (an fp32 checkpoint exported to bf16 or fp16); a value
beyond the target's range would become inf, which is never acceptable: ``check_finite`` stops the export
naming the tensor, its largest magnitude and the dtypes that hold it.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch

from ..config import ModelConfig
from .errors import ConvertError

DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HF_NAMES: Dict[torch.dtype, str] = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
_SHORT_BY_HF_NAME = {HF_NAMES[dtype]: short for short, dtype in DTYPES.items()}
# safetensors header codes of the dtypes above.
_SAFETENSORS_CODES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
DEFAULT = "bf16"


def hf_dtype_name(value: object) -> Optional[str]:
    """``bfloat16``/``float16``/``float32`` for a config.json dtype or a safetensors code; None otherwise."""
    if not isinstance(value, str):
        return None
    name = value.removeprefix("torch.")
    return name if name in _SHORT_BY_HF_NAME else _SAFETENSORS_CODES.get(name)


def export_dtype(choice: Optional[str], cfg: ModelConfig) -> Tuple[str, torch.dtype]:
    """(short name, torch dtype) of an export: ``choice`` (--dtype), else ``model.hf.dtype``, else bf16."""
    if choice is None:
        recorded = cfg.hf.dtype  # checked by hf_metadata.check_metadata
        choice = _SHORT_BY_HF_NAME[recorded] if recorded in _SHORT_BY_HF_NAME else DEFAULT
    if choice not in DTYPES:
        raise ConvertError(f"--dtype {choice}: choose one of {', '.join(DTYPES)}")
    return choice, DTYPES[choice]


def check_finite(name: str, blocks: Iterable[torch.Tensor], dtype: torch.dtype,
                 source_max: Callable[[], float]) -> Iterator[torch.Tensor]:
    """Pass the converted blocks of tensor ``name`` through, stopping at a non-finite value.

    ``source_max`` gives the tensor's largest magnitude as stored (read again only on this error path).
    """
    for block in blocks:
        if block.is_floating_point() and not bool(torch.isfinite(block).all()):
            largest = source_max()
            if largest != largest or largest == float("inf"):
                raise ConvertError(f"{name} holds inf or NaN in the checkpoint itself; it cannot be exported "
                                   f"(use an earlier checkpoint)")
            limit = torch.finfo(dtype).max
            wider = [short for short, d in DTYPES.items() if torch.finfo(d).max >= largest]
            raise ConvertError(
                f"{name} holds values up to {largest:.6g} in magnitude, beyond {HF_NAMES[dtype]}'s range "
                f"(±{limit:.6g}): they would become inf. Export with --dtype {' or '.join(wider)} instead"
            )
        yield block
