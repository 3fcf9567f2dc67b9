"""Grouped-query self-attention with RoPE, optional QK-norm, and the attention kernels.

The mask (causal, packed documents, sliding window) is built once per micro-batch by
``masks.build_attention_mask`` and shared by every layer; its type picks the kernel here.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .linear import Linear
from .masks import AttentionMask
from .norms import RMSNorm
from .rope import apply_rope


class Attention(nn.Module):
    """``wq``/``wk``/``wv``/``wo`` without bias; ``q_norm``/``k_norm`` (per head, Apertus) when qk_norm.

    Head counts are read from the projection outputs (``view(..., -1, head_dim)``), so a tensor-parallel
    plan that shards ``wq``/``wk``/``wv`` column-wise and ``wo`` row-wise just works on the local heads.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.head_dim = head_dim
        self.wq = Linear(dim, num_heads * head_dim, bias=False)
        self.wk = Linear(dim, num_kv_heads * head_dim, bias=False)
        self.wv = Linear(dim, num_kv_heads * head_dim, bias=False)
        self.wo = Linear(num_heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: Tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask = None,
    ) -> torch.Tensor:
        batch, length = x.shape[0], x.shape[1]
        # [B, L, heads, head_dim]: RoPE and QK-norm work on this layout; SDPA takes a transposed view.
        q = self.wq(x).view(batch, length, -1, self.head_dim)
        k = self.wk(x).view(batch, length, -1, self.head_dim)
        v = self.wv(x).view(batch, length, -1, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        cos, sin = rope
        q = apply_rope(q, cos, sin).transpose(1, 2)
        k = apply_rope(k, cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        out = attention_forward(q, k, v, mask)
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


def _sdpa_backends(device: torch.device) -> List[SDPBackend]:
    """Kernel priority for plain causal SDPA on GPUs; MATH last, so an unsupported shape or dtype still
    runs (slowly) instead of failing. ROCm has no cuDNN attention: flash (CK/Triton), then efficient."""
    if torch.version.hip is not None:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH]


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    # Eager flex_attention materialises the full score matrix; compiled, it is one fused kernel.
    return torch.compile(flex_attention, dynamic=False)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask = None) -> torch.Tensor:
    """Attention on ``[B, heads, L, head_dim]`` with grouped KV heads, for a mask from
    ``masks.build_attention_mask``: None (causal), a dense boolean tensor, or a FlexAttention BlockMask."""
    if isinstance(mask, BlockMask):
        on_cpu_or_traced = q.device.type == "cpu" or torch.compiler.is_compiling()
        flex = flex_attention if on_cpu_or_traced else _compiled_flex()
        return flex(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return _sdpa(q, k, v, mask)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Causal SDPA on ``[B, heads, L, head_dim]`` with grouped KV heads.

    ``enable_gqa`` lets the kernel index shared KV heads without materialising copies (measured on CPU:
    as fast as or faster than expanding KV). With an explicit mask on CUDA, only the memory-efficient
    kernel accepts the mask and it lacks GQA support, so KV heads are expanded there instead of falling
    back to the math kernel.
    """
    if mask is None:
        if q.device.type != "cuda":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        with sdpa_kernel(_sdpa_backends(q.device), set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    groups = q.shape[1] // k.shape[1]
    if q.is_cuda and groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
