"""Known accelerators: vendor and dense bf16 peak FLOP/s, matched by name (torch-free).

One table serves MFU at run time (``train/mfu.py`` matches ``torch.cuda.get_device_name``), the
job environment (``launch/render.py`` picks the allocator variable by vendor) and config checks
(``validation.py`` refuses Float8 on GPUs without FP8 tensor cores). Peaks are the vendors' dense
(no sparsity) bf16 tensor-core figures per device as PyTorch sees it (one GCD of an MI250X).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GpuSpec:
    name: str
    vendor: str          # nvidia | amd
    bf16_peak_flops: float
    float8: bool         # FP8 tensor cores (Hopper/Ada and newer, MI300)
    # Fraction of the bf16 peak a compiled/fused Llama block reaches at training shapes: the throughput
    # model's one free figure per GPU model, calibrated on published runs (plan/throughput.py,
    # tests/test_plan_throughput.py; A100/MI250X from published MFU, see benchmarks/README.md).
    matmul_efficiency: float


# Most specific patterns first: "GH200" must not match as "H100", "H100 PCIe" not as "H100".
_TABLE = (
    (("GH200",), GpuSpec("GH200", "nvidia", 989e12, True, 0.42)),
    (("H100 PCIE", "H100 PCI"), GpuSpec("H100 PCIe", "nvidia", 756e12, True, 0.50)),
    (("H200",), GpuSpec("H200 SXM", "nvidia", 989e12, True, 0.50)),
    (("H100",), GpuSpec("H100 SXM", "nvidia", 989e12, True, 0.50)),
    (("A100",), GpuSpec("A100", "nvidia", 312e12, False, 0.47)),
    (("MI300X",), GpuSpec("MI300X", "amd", 1307e12, True, 0.35)),
    (("MI250X", "MI250"), GpuSpec("MI250X GCD", "amd", 191.5e12, False, 0.40)),
)
AMD_HINTS = ("MI2", "MI3", "INSTINCT", "AMD", "RADEON")


def match_gpu(name: str) -> Optional[GpuSpec]:
    """The spec whose pattern occurs in ``name`` (case-insensitive), or None for an unknown GPU."""
    upper = (name or "").upper()
    for patterns, spec in _TABLE:
        if any(p in upper for p in patterns):
            return spec
    return None


def gpu_vendor(name: str) -> Optional[str]:
    """nvidia | amd from a GPU model name (cluster.gpu_model or the device name); None if unknown."""
    spec = match_gpu(name)
    if spec is not None:
        return spec.vendor
    upper = (name or "").upper()
    if any(h in upper for h in AMD_HINTS):
        return "amd"
    return None
