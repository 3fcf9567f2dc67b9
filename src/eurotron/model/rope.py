"""Rotary position embedding (RoPE) with optional Llama-3.1 frequency scaling.

Convention: *rotate-half* (GPT-NeoX / Hugging Face), not Meta's interleaved complex pairs.
Within each head, dimension ``i`` is paired with ``i + head_dim/2`` and rotated by angle
``pos * inv_freq[i]``. Meta's original Llama code pairs ``(2i, 2i+1)`` instead; Hugging Face's
conversion script permutes the rows of ``wq``/``wk`` inside every head so that rotate-half on the
permuted weights computes exactly what Meta's code computed. Every checkpoint we import from or export
to (Llama, Mistral, Apertus on the Hub) is stored in that permuted layout, so by using rotate-half on
the same layout our ``wq``/``wk`` equal HF's ``q_proj``/``k_proj`` verbatim: the converter needs no
permutation in either direction. (For training from scratch the two conventions are equivalent up to a
fixed relabelling of the head dimensions.)

The table holds ``cos`` and ``sin`` of the half-dimension angles side by side, ``[max_seq_len, head_dim]``,
computed in fp32 the way Hugging Face computes it (``float(pos) * inv_freq`` in fp32), so converted
models give the same numbers here and in transformers.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..config import RopeScalingConfig


def rope_inv_freq(
    head_dim: int,
    theta: float,
    scaling: Optional[RopeScalingConfig] = None,
    device: Optional[torch.device | str] = None,
) -> torch.Tensor:
    """Inverse frequencies ``theta ** (-2i / head_dim)``, ``[head_dim // 2]`` fp32.

    With ``scaling.type == "llama3"`` (Llama 3.1, Apertus) wavelengths longer than
    ``original_max_position_embeddings / low_freq_factor`` are slowed down by ``factor``, wavelengths
    shorter than ``original / high_freq_factor`` are kept, and the band in between is interpolated
    smoothly between the two.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    kind = "none" if scaling is None else scaling.type
    if kind == "none":
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"unknown rope_scaling.type {kind!r}; expected 'none' or 'llama3'")
    factor = scaling.factor
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    context = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    long_waves = wavelen > context / low
    short_waves = wavelen < context / high
    scaled = torch.where(long_waves, inv_freq / factor, inv_freq)
    # Interpolation weight: 0 at the low-frequency edge of the band, 1 at the high-frequency edge.
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~long_waves & ~short_waves
    return torch.where(medium, blended, scaled)


def rope_table(
    max_seq_len: int,
    head_dim: int,
    theta: float,
    scaling: Optional[RopeScalingConfig] = None,
    device: Optional[torch.device | str] = None,
) -> torch.Tensor:
    """``[max_seq_len, head_dim]`` fp32: ``cos`` of the angles in the first half, ``sin`` in the second."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling, device)
    positions = torch.arange(max_seq_len, device=device, dtype=torch.int64).float()
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def rope_cos_sin(
    table: torch.Tensor, seq_len: int, position_ids: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Look up cos/sin for the given positions, shaped to broadcast over ``[B, L, heads, head_dim/2]``.

    Returns ``[1, L, 1, head_dim/2]`` tensors for the default ``arange`` positions and
    ``[B, L, 1, head_dim/2]`` ones for explicit ``position_ids`` (e.g. restarting per packed document).
    """
    rows = table[:seq_len].unsqueeze(0) if position_ids is None else table[position_ids]
    cos, sin = rows.unsqueeze(2).chunk(2, dim=-1)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, L, heads, head_dim]`` by the angles whose cos/sin are given (rotate-half).

    Equal to Hugging Face's ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)``, written on the halves
    so no full-width cos/sin or rotated copy of ``x`` is materialised.
    """
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
