"""``Linear``: an ``nn.Linear`` whose fp32 CPU matmuls (forward and both gradients) run on oneDNN.

PyTorch sends fp32 CPU matmuls to MKL's sgemm. On AMD EPYC CPUs (EuroHPC login and CPU partitions,
and the project's CI machine) MKL does not take its fastest code path, while oneDNN's JIT GEMM does:
on the CI machine (2 Zen 5 cores) oneDNN runs the model's GEMM shapes at 320-510 GFLOP/s against
MKL's 180-235 (``benchmarks/cpu_step.py``). Results are fp32 throughout; only the summation order
differs (~1e-6 relative, the same as between two BLAS libraries).

Everything that is not a plain fp32 CPU tensor keeps ``F.linear``: DTensors (tensor parallelism),
CUDA/ROCm tensors, meta/fake tensors, bf16, and CPU autocast. The subclass stays an ``nn.Linear``,
so tensor-parallel plans, FSDP2 and checkpoints see exactly what they saw before.

``set_cpu_matmul("aten")`` switches back to PyTorch's default kernels (``train.cpu_matmul``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

CPU_MATMUL_BACKENDS = ("onednn", "aten")


def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN and its dense linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_backend = "onednn" if onednn_available() else "aten"


def set_cpu_matmul(backend: str) -> None:
    """Choose the kernels for fp32 CPU linears: ``"onednn"`` (default where built) or ``"aten"``."""
    global _backend
    if backend not in CPU_MATMUL_BACKENDS:
        raise ValueError(f"cpu_matmul={backend!r} is not one of {CPU_MATMUL_BACKENDS}")
    if backend == "onednn" and not onednn_available():
        raise ValueError("cpu_matmul='onednn' but this PyTorch build has no oneDNN; use cpu_matmul=aten")
    _backend = backend


def cpu_matmul() -> str:
    return _backend


# A custom op, so that torch.compile keeps the call opaque (inductor cannot lower the oneDNN
# operator with an unpacked weight) and knows its output shape from the fake implementation.
@torch.library.custom_op("eurotron::onednn_mm", mutates_args=())
def _onednn_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a @ b_t.T`` for 2-D ``a`` [m, k] and ``b_t`` [n, k] (either may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [None], "")


@_onednn_mm.register_fake
def _(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b_t.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        return _onednn_mm(x2, weight).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        x2, weight = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_mm(g2, weight.t()).view(*grad_out.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            out_features, in_features = weight.shape
            if out_features > in_features:
                # Wide outputs (up-projections, the vocabulary head) run faster as (x^T g)^T.
                grad_w = _onednn_mm(x2.t(), g2.t()).t().contiguous()
            else:
                grad_w = _onednn_mm(g2.t(), x2.t())
        return grad_x, grad_w


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _backend == "onednn"
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not isinstance(x, DTensor)
        and not isinstance(weight, DTensor)
        and not torch.is_autocast_enabled("cpu")
        and x.numel() > 0
    )


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` without bias, on oneDNN where ``_takes_onednn`` allows."""
    if _takes_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight)
    return F.linear(x, weight)


class Linear(nn.Linear):
    """Bias-free ``nn.Linear`` (the model never uses biases) routed through :func:`linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **kwargs) -> None:  # noqa: ANN003
        if bias:
            raise ValueError("eurotron's Linear has no bias (Llama-family projections are bias-free)")
        super().__init__(in_features, out_features, bias=False, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)
