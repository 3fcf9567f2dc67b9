"""xIELU activation (Huang & Schlag 2024, https://arxiv.org/abs/2411.13010), as used by Apertus.

    xielu(x) = alpha_p * x^2 + beta * x                          for x > 0
             = alpha_n * (expm1(min(x, eps)) - x) + beta * x     for x <= 0

with ``alpha_p = softplus(a_p)`` and ``alpha_n = beta + softplus(a_n)`` kept positive (and
``alpha_n >= beta``) through a softplus parametrisation of two learnable scalars per layer.

Parameter names and their relation to transformers' ``XIELUActivation`` (``activations.py``), which
Apertus uses as ``model.layers.N.mlp.act_fn``:

    ours (layers.N.feed_forward.act.*)   Hugging Face (model.layers.N.mlp.act_fn.*)
    alpha_p  Parameter [1], raw a_p   <->  alpha_p  Parameter [1], the same raw (pre-softplus) value
    alpha_n  Parameter [1], raw a_n   <->  alpha_n  Parameter [1], the same raw (pre-softplus) value
    beta     python float (0.5)       <->  beta     persistent buffer, scalar tensor (0.5)
    eps      python float (-1e-6)     <->  eps      persistent buffer, scalar tensor (-1e-6)

so a checkpoint maps 1:1: copy ``alpha_p``/``alpha_n``; ``beta``/``eps`` are fixed constants (read them
from the HF buffers on import, write them as buffers on export). Initial values match HF's defaults:
``alpha_p = softplus^-1(0.8)``, ``alpha_n = softplus^-1(0.8 - beta)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class XIELU(nn.Module):
    def __init__(
        self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8, beta: float = 0.5, eps: float = -1e-6
    ) -> None:
        super().__init__()
        self.alpha_p_init = alpha_p_init
        self.alpha_n_init = alpha_n_init
        self.beta = beta
        self.eps = eps
        self.alpha_p = nn.Parameter(torch.empty(1))
        self.alpha_n = nn.Parameter(torch.empty(1))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha_p.fill_(_inverse_softplus(self.alpha_p_init))
            self.alpha_n.fill_(_inverse_softplus(self.alpha_n_init - self.beta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha_p = F.softplus(self.alpha_p).to(x.dtype)
        alpha_n = (self.beta + F.softplus(self.alpha_n)).to(x.dtype)
        positive = alpha_p * x * x
        negative = (torch.expm1(torch.clamp_max(x, self.eps)) - x) * alpha_n
        return torch.where(x > 0, positive, negative) + self.beta * x

    def extra_repr(self) -> str:
        return f"beta={self.beta}, eps={self.eps}"
