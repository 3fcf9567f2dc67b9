"""Float8 training (``train.float8``): torchao swaps the model's Linear layers for Float8Linear.

Applied per model part on the meta device, before tensor parallelism, checkpointing and compile (as
torchtitan converts its model first), so the later steps see ordinary ``nn.Linear`` subclasses. FP8
matmuls need FP8 tensor cores: CUDA compute capability >= 8.9 (H100, H200, GH200) or ROCm gfx94x
(MI300). Everything else — CPU, A100 (sm80), MI250X (gfx90a) — is refused with the reason, and so is
a missing torchao (not a dependency of eurotron: it must match the CUDA build of torch).

Only the transformer blocks' projections are converted: the output projection (the LM head) stays in
bf16, as torchtitan leaves it, because the logits' precision drives the loss; a Linear whose
dimensions are not multiples of 16 (FP8 GEMM's alignment) is skipped.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from torch import nn

from ..config import ConfigError

INSTALL_HINT = ("install torchao built for your torch (pip install torchao; see "
                "https://github.com/pytorch/ao for the version matching torch and CUDA) in the training "
                "environment, or set train.float8=false")
FLOAT8_MIN_CAPABILITY = (8, 9)


def float8_device_problem(device: torch.device) -> Optional[str]:
    """Why ``device`` cannot run Float8 training, or None when it can."""
    if device.type != "cuda":
        return f"needs a GPU with FP8 tensor cores (H100, GH200); this run is on {device.type}"
    hip = getattr(torch.version, "hip", None)
    if hip:
        arch = str(getattr(torch.cuda.get_device_properties(device), "gcnArchName", "")).split(":")[0]
        if not arch.startswith(("gfx94", "gfx95")):
            return f"needs FP8 tensor cores; this ROCm GPU ({arch or 'unknown arch'}, e.g. MI250X = gfx90a) has none"
        return None
    capability = tuple(torch.cuda.get_device_capability(device))
    if capability < FLOAT8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"needs compute capability >= {FLOAT8_MIN_CAPABILITY[0]}.{FLOAT8_MIN_CAPABILITY[1]} "
                f"(H100, GH200); {name} is sm{capability[0]}{capability[1]} (A100 = sm80)")
    return None


def _convertible(module: nn.Module, fqn: str) -> bool:
    if not isinstance(module, nn.Linear) or fqn.split(".")[-1] == "output":
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_float8(part: nn.Module, enabled: bool, device: torch.device) -> int:
    """Convert ``part``'s block Linears to Float8Linear when ``enabled``; returns how many were converted."""
    if not enabled:
        return 0
    problem = float8_device_problem(device)
    if problem is not None:
        raise ConfigError(f"train.float8=true: {problem}; set train.float8=false")
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError(f"train.float8=true: torchao is not installed; {INSTALL_HINT}")
    from torchao.float8 import convert_to_float8_training

    before = sum(isinstance(m, nn.Linear) for m in part.modules())
    convert_to_float8_training(part, module_filter_fn=_convertible)
    after = sum(type(m).__name__ == "Float8Linear" for m in part.modules())
    if after == 0 and before:
        raise ConfigError("train.float8=true: no Linear layer of this model part could be converted "
                          "(dimensions must be multiples of 16); set train.float8=false")
    return after
