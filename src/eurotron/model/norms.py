"""RMSNorm, computed in fp32 and cast back to the input dtype (the Llama / Apertus convention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension.

    Hugging Face's LlamaRMSNorm normalises in fp32, casts the result back to the input dtype and only
    then multiplies by the weight; we do the same so that bf16 runs match a converted checkpoint.
    For fp32 inputs the single fused ``F.rms_norm`` call gives bit-identical results (multiplication
    commutes), so that case takes the one-kernel path.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (self.dim,), eps=self.eps)
        return self.weight * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
