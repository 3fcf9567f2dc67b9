"""What DeepSpeed ZeRO keeps on each GPU and in each node's host memory (torch-free, config only).

Kept apart from plan/memory.py so the layout model can take it as one term: ``estimate_memory`` asks
``gpu_state_bytes`` for the training state of a ``dp_engine=deepspeed`` rank instead of FSDP's
16 B/param / dp_shard, and ``fit_problem`` adds ``host_problem`` (offload must fit the node's RAM).

Per parameter, as the ZeRO paper counts it (bf16 mixed precision; fp32 runs keep no separate master):

* working weights ``w`` (2 B bf16, 4 B fp32) and gradients ``g`` (same size), partitioned over dp
  from ZeRO-3 (weights) and ZeRO-2 (gradients) on;
* optimizer state ``o``: fp32 master (bf16 runs only) + AdamW's two moments = 12 B (8 B in fp32),
  always partitioned over dp; ``offload_optimizer=cpu`` moves it, plus an fp32 gradient partition
  (4 B), to host memory; ``nvme`` moves it to the drive (host buffers not counted);
* ``offload_params=cpu`` (ZeRO-3) moves the weight partitions to host memory too.
* start-up: ZeRO-1/2 build the whole model on each rank's device in fp32 before DeepSpeed takes it;
  ZeRO-3 materialises and partitions one top-level module at a time (parallel/deepspeed_engine.py),
  so only the largest one (the embedding or output projection, or a block) must fit in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import TrainConfig

GiB = 2**30
FP32 = 4


@dataclass
class DeepSpeedMemory:
    gpu_state_bytes: int    # per rank, steady state: weights, gradients, optimizer state left on the GPU
    host_bytes: int         # per rank in host memory (offload)
    startup_bytes: int      # per rank on the GPU before partitioning (the full fp32 model)


def _bf16(cfg: TrainConfig) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and cfg.cluster.device != "cpu")


def deepspeed_memory(cfg: TrainConfig, params: int, largest_module: int = 0) -> DeepSpeedMemory:
    """Bytes per rank for ``params`` parameters under ``cfg.parallel.deepspeed`` (module docstring);
    ``largest_module``: parameters of the largest top-level module (ZeRO-3's start-up)."""
    ds, dp = cfg.parallel.deepspeed, max(cfg.parallel.dp, 1)
    w = 2 if _bf16(cfg) else FP32
    g = w
    o = 3 * FP32 if _bf16(cfg) else 2 * FP32
    weights = params * w / (dp if ds.zero_stage >= 3 else 1)
    grads = params * g / (dp if ds.zero_stage >= 2 else 1)
    optim = params * o / dp
    host = 0.0
    if ds.offload_optimizer == "cpu":
        host += optim + params * FP32 / dp
    if ds.offload_optimizer != "none":
        optim = 0.0
    if ds.zero_stage >= 3 and ds.offload_params != "none":
        if ds.offload_params == "cpu":
            host += weights
        weights = 0.0
    startup = (largest_module if ds.zero_stage >= 3 else params) * FP32
    return DeepSpeedMemory(int(weights + grads + optim), int(host), startup)


def host_problem(cfg: TrainConfig, params: int, ranks_per_node: int) -> Optional[str]:
    """None when the offloaded state of a node's ranks fits ``cluster.host_memory_gb`` (0: unknown, no
    check), else why not."""
    c = cfg.cluster
    if cfg.parallel.dp_engine != "deepspeed" or c.host_memory_gb <= 0:
        return None
    per_node = deepspeed_memory(cfg, params).host_bytes * ranks_per_node
    usable = (c.host_memory_gb - c.host_memory_reserve_gb) * GiB
    if per_node <= usable:
        return None
    return (f"DeepSpeed offload keeps about {per_node / GiB:.0f} GiB per node in host memory "
            f"({ranks_per_node} ranks) but a {c.name} node has {c.host_memory_gb:g} GiB, "
            f"{c.host_memory_reserve_gb:g} GiB of it reserved; use more nodes (parallel.dp_shard), "
            f"parallel.deepspeed.offload_optimizer=nvme, or offload less")


def startup_problem(cfg: TrainConfig, params: int, largest_module: int) -> Optional[str]:
    """None when what is built in fp32 before DeepSpeed partitions it fits one GPU."""
    c = cfg.cluster
    if cfg.parallel.dp_engine != "deepspeed" or c.gpu_memory_gb <= 0:
        return None
    need = deepspeed_memory(cfg, params, largest_module).startup_bytes
    if need <= (c.gpu_memory_gb - c.memory_reserve_gb) * GiB:
        return None
    return (f"ZeRO-{cfg.parallel.deepspeed.zero_stage} builds the whole model ({need / GiB:.0f} GiB in fp32) on "
            f"each GPU before partitioning it but a GPU has {c.gpu_memory_gb:g} GiB; use "
            f"parallel.deepspeed.zero_stage=3 (it partitions one module at a time) or parallel.dp_engine=fsdp")
