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
from .dtypes import HF_NAMES, hf_dtype_name
from .errors import ConvertError

TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# eurotron_tokenizer.json's key for each of them.
_TOKENIZER_KEYS = {"bos_token_id": "bos_id", "eos_token_id": "eos_id", "pad_token_id": "pad_id"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def id_problem(key: str, value: Any) -> Optional[str]:
    """What is wrong with a special id: an int; ``eos_token_id`` may also be a list of ints; None is unset."""
    if value is None or _is_int(value):
        return None
    if key == "eos_token_id" and isinstance(value, (list, tuple)) and value and all(map(_is_int, value)):
        return None
    return "must be an integer or a list of integers (or null)" if key == "eos_token_id" else "must be an integer (or null)"


def _checked_id(key: str, value: Any, where: str) -> Any:
    problem = id_problem(key, value)
    if problem:
        raise ConvertError(f"{where}: {key}={value!r} {problem}")
    return list(value) if isinstance(value, (list, tuple)) else value


def metadata_from_hf(config: Dict[str, Any], generation: Optional[Dict[str, Any]],
                     weight_dtype: Optional[str], where: str) -> HFExportConfig:
    """``model.hf`` for a source with this config.json, generation_config.json and weight dtype."""
    ids = {key: _checked_id(key, config.get(key), where) for key in TOKEN_KEYS}
    dtype = weight_dtype or hf_dtype_name(config.get("dtype")) or hf_dtype_name(config.get("torch_dtype"))
    return HFExportConfig(**ids, dtype=dtype, generation_config=dict(generation) if generation is not None else None)


def metadata_problems(hf: HFExportConfig) -> List[str]:
    """``model.hf.<key>=<value>: <fix>`` for each bad value of a (possibly hand-edited) ``model.hf``."""
    problems = [f"model.hf.{key}={getattr(hf, key)!r}: {id_problem(key, getattr(hf, key))}"
                for key in TOKEN_KEYS if id_problem(key, getattr(hf, key))]
    if hf.dtype is not None and hf_dtype_name(hf.dtype) != hf.dtype:
        problems.append(f"model.hf.dtype={hf.dtype!r}: must be one of {', '.join(HF_NAMES.values())} (or null)")
    return problems


def check_metadata(hf: HFExportConfig, where: str) -> None:
    """Refuse a bad ``model.hf`` before anything is written."""
    problems = metadata_problems(hf)
    if problems:
        raise ConvertError(f"{where}: " + "; ".join(problems) + "; fix it there")


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
