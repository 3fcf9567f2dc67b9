"""Attention masks for packed documents and sliding windows, built once per micro-batch.

The loader restarts ``position_ids`` at 0 after every EOS (data/loader.py, on the CPU), so they already
describe the document boundaries; a document id is the running count of those restarts. The rule
"token ``q`` may attend to token ``kv``" is, in every backend::

    kv <= q  and  document[kv] == document[q]  and  (window == 0 or q - kv < window)

(``q - kv < window``: a token sees itself and the ``window - 1`` tokens before it, as Mistral and
Hugging Face count it). ``build_attention_mask`` turns it into what the attention kernels take:

* ``None``: plain causal attention (SDPA ``is_causal``: flash / cuDNN kernels);
* a FlexAttention ``BlockMask`` (backend ``flex``): masked blocks are skipped, not computed;
* a dense boolean ``[B, 1, L, L]`` tensor (backend ``sdpa``): the reference path, used on CPU.

Nothing here reads a value back from an accelerator: whether a micro-batch has any boundary at all is
known for free only when ``position_ids`` live in host memory (CPU runs), and read there through numpy;
on a GPU every document-masked micro-batch gets a mask (a row without boundaries is just causal).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

ATTENTION_BACKENDS = ("auto", "sdpa", "flex")
AttentionMask = Union[None, torch.Tensor, BlockMask]


def resolve_backend(choice: str, device: torch.device, masked: bool) -> str:
    """``sdpa`` or ``flex`` for ``model.attention`` on ``device``.

    auto: flex where a mask is needed (document masking or a sliding window) on a GPU, sdpa otherwise —
    on CPU the dense reference, since torch 2.13 has no FlexAttention backward there.
    """
    if choice not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention={choice!r}: must be one of {', '.join(ATTENTION_BACKENDS)}")
    if choice == "auto":
        return "flex" if masked and device.type == "cuda" else "sdpa"
    return choice


def check_trainable(choice: str, device: torch.device) -> None:
    """model.attention=flex trains only on GPUs: torch 2.13 has no FlexAttention backward on CPU. Validation
    refuses cluster.device=cpu; this catches cluster.device=auto on a machine without a GPU."""
    if choice == "flex" and device.type == "cpu":
        from ..config import ConfigError

        raise ConfigError("model.attention=flex: this run is on the CPU (no GPU visible) and torch has no "
                          "FlexAttention backward on CPU; use model.attention=auto (or sdpa), or run on a GPU")


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, L]``: the index of each token's document in its row (a document starts at position 0)."""
    return (position_ids == 0).cumsum(dim=-1, dtype=torch.int32)


def may_have_boundaries(position_ids: torch.Tensor) -> bool:
    """False only when ``position_ids`` provably hold one document per row.

    Read from host memory through numpy (no aten op, no device sync); for a tensor on an accelerator,
    or while tracing, the answer is True without looking (the mask then handles a boundary-free row).
    """
    if position_ids.shape[-1] < 2:
        return False
    if position_ids.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return bool((position_ids.detach().numpy()[:, 1:] == 0).any())


def mask_mod(docs: Optional[torch.Tensor], window: int) -> Callable:
    """The rule above as a FlexAttention ``mask_mod(b, h, q, kv)`` (``docs``: None = one document)."""

    def rule(b, h, q, kv):  # noqa: ANN001 - FlexAttention's signature
        keep = q >= kv
        if docs is not None:
            keep = keep & (docs[b, q] == docs[b, kv])
        if window > 0:
            keep = keep & (q - kv < window)
        return keep

    return rule


@functools.lru_cache(maxsize=None)
def _compiled_create_block_mask():
    return torch.compile(create_block_mask)


def dense_mask(docs: Optional[torch.Tensor], window: int, length: int, device: torch.device) -> torch.Tensor:
    """The rule above as a boolean ``[B or 1, 1, L, L]`` tensor (True = may attend)."""
    idx = torch.arange(length, device=device)
    distance = idx.unsqueeze(-1) - idx.unsqueeze(0)  # q - kv
    keep = distance >= 0
    if window > 0:
        keep = keep & (distance < window)
    if docs is None:
        return keep[None, None]
    return (keep & (docs.unsqueeze(-1) == docs.unsqueeze(-2))).unsqueeze(1)


def build_attention_mask(
    position_ids: Optional[torch.Tensor],
    length: int,
    device: torch.device,
    *,
    backend: str,
    document_masking: bool,
    sliding_window: int = 0,
) -> AttentionMask:
    """The mask every layer of one micro-batch shares (see the module docstring).

    ``position_ids`` ``[B, L]`` (None: ``arange(L)``, one document per row); ``backend`` is a resolved
    ``sdpa`` or ``flex``. The GPU smoke script calls this with ``backend="flex"`` / ``"sdpa"`` and feeds
    both results to ``attention.attention_forward`` to compare the kernels.
    """
    docs = None
    if document_masking and position_ids is not None and may_have_boundaries(position_ids):
        docs = document_ids(position_ids.to(device, non_blocking=True))
    if sliding_window >= length:
        sliding_window = 0  # a window as long as the sequence masks nothing: keep the causal fast path
    if docs is None and sliding_window <= 0:
        return None
    if backend == "flex":
        batch = None if docs is None else docs.shape[0]
        # Compiled on GPUs so the [B, L, L] rule is never materialised; eager on CPU (tests only).
        create = create_block_mask if torch.device(device).type == "cpu" else _compiled_create_block_mask()
        return create(mask_mod(docs, sliding_window), batch, None, length, length, device=device)
    return dense_mask(docs, sliding_window, length, device)


def document_causal_mask(position_ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The dense ``[B, 1, L, L]`` document-causal mask of ``position_ids``, or None for plain causal."""
    if position_ids is None:
        return None
    return build_attention_mask(position_ids, position_ids.shape[-1], position_ids.device,
                                backend="sdpa", document_masking=True)
