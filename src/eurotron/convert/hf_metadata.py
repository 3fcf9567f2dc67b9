"""Special token ids and generation defaults of a Hugging Face export, and where each comes from.

One rule for both directions:

* ``from-hf`` records the source's ``bos/eos/pad_token_id`` (from config.json, as published: an
  ``eos_token_id`` list stays a list), the dtype of its weights and its ``generation_config.json``
  (verbatim) in ``model.hf`` (``config.HFExportConfig``); the model config travels into every run that
  starts from it and into every checkpoint, so nothing depends on tokenizer files being present.
* ``to-hf`` writes ``model.hf``'s ids where set; an id it does not know comes from the checkpoint's
  tokenizer (``tokenizer/eurotron_tokenizer.json``: a model trained from scratch). ``generation_config.json``
  is the recorded one when there is one, else the ids.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..config import HFExportConfig
from .dtypes import hf_dtype_name
from .errors import ConvertError

TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# eurotron_tokenizer.json's key for each of them.
_TOKENIZER_KEYS = {"bos_token_id": "bos_id", "eos_token_id": "eos_id", "pad_token_id": "pad_id"}


def _check_id(key: str, value: Any, where: str) -> Any:
    """An id is an int; ``eos_token_id`` may also be a list of ints; None is "not set"."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if value is None or is_int(value):
        return value
    if key == "eos_token_id" and isinstance(value, (list, tuple)) and value and all(map(is_int, value)):
        return [int(v) for v in value]
    kind = "an integer or a list of integers" if key == "eos_token_id" else "an integer"
    raise ConvertError(f"{where}: {key}={value!r} must be {kind} (or null)")


def metadata_from_hf(config: Dict[str, Any], generation: Optional[Dict[str, Any]],
                     weight_dtype: Optional[str], where: str) -> HFExportConfig:
    """``model.hf`` for a source with this config.json, generation_config.json and weight dtype."""
    ids = {key: _check_id(key, config.get(key), where) for key in TOKEN_KEYS}
    dtype = weight_dtype or hf_dtype_name(config.get("dtype")) or hf_dtype_name(config.get("torch_dtype"))
    return HFExportConfig(**ids, dtype=dtype, generation_config=dict(generation) if generation is not None else None)


def check_metadata(hf: HFExportConfig, where: str) -> None:
    """A hand-edited ``model.hf`` section is checked before anything is written."""
    for key in TOKEN_KEYS:
        _check_id(key, getattr(hf, key), f"{where} (model.hf)")
    if hf.generation_config is not None and not isinstance(hf.generation_config, dict):
        raise ConvertError(f"{where}: model.hf.generation_config must be a mapping (or null)")


def special_token_ids(hf: HFExportConfig, tokenizer_ids: Optional[Dict[str, int]]) -> Tuple[Dict[str, Any], List[str]]:
    """(config.json's three ids, warnings): ``model.hf`` first, the tokenizer's for an id it lacks.

    A recorded id that the tokenizer disagrees with is kept (it is the source's) and reported.
    """
    tok = tokenizer_ids or {}
    ids: Dict[str, Any] = {}
    warnings: List[str] = []
    for key in TOKEN_KEYS:
        raw = tok.get(_TOKENIZER_KEYS[key])
        from_tokenizer = int(raw) if isinstance(raw, int) and raw >= 0 else None  # -1: the tokenizer has none
        recorded = getattr(hf, key)
        if recorded is None:
            ids[key] = from_tokenizer
            continue
        ids[key] = list(recorded) if isinstance(recorded, (list, tuple)) else recorded
        agrees = from_tokenizer is None or from_tokenizer == recorded or (
            isinstance(recorded, list) and from_tokenizer in recorded)
        if not agrees:
            warnings.append(f"{key}: the checkpoint's tokenizer says {from_tokenizer}, model.hf (the imported "
                            f"model's config.json) says {recorded}; wrote {recorded}")
    return ids, warnings


def generation_config(hf: HFExportConfig, ids: Dict[str, Any]) -> Dict[str, Any]:
    """generation_config.json: the recorded one verbatim, else the special ids that are set."""
    if hf.generation_config is not None:
        return dict(hf.generation_config)
    return {key: value for key, value in ids.items() if value is not None}
