"""Checks of ``parallel.dp_engine=deepspeed`` and ``parallel.deepspeed.*`` (called by validation.py).

DeepSpeed ZeRO is eurotron's third data-parallel engine; what it cannot compose with is refused here,
before any process starts, with the reason and the fix.
"""

from __future__ import annotations

from .config import TrainConfig
from .parallel.deepspeed_config import OFFLOAD_DEVICES, ZERO_STAGES, override_problems


def check_deepspeed(cfg: TrainConfig, p) -> None:
    par, ds = cfg.parallel, cfg.parallel.deepspeed
    if par.dp_engine != "deepspeed":
        return
    if par.pp > 1:
        p.add("parallel.pp", par.pp,
              "DeepSpeed ZeRO does not compose with pipeline parallelism here: DeepSpeed's own PipelineEngine "
              "supports ZeRO-1 only (not ZeRO-2/3) and eurotron's pipeline (torch.distributed.pipelining) runs "
              "outside DeepSpeed's engine; use parallel.pp=1, or parallel.dp_engine=fsdp with pipeline parallelism")
    if par.tp > 1:
        p.add("parallel.tp", par.tp,
              "DeepSpeed ZeRO does not partition eurotron's DTensor tensor-parallel shards (it knows Megatron's "
              "mpu, not DeviceMesh); use parallel.tp=1, or parallel.dp_engine=fsdp for TP x DP")
    if par.dp_replicate > 1:
        p.add("parallel.dp_replicate", par.dp_replicate,
              "DeepSpeed partitions over all data-parallel ranks: use parallel.dp_shard for the ZeRO group size "
              "(parallel.deepspeed.zero_hpz_partition_size gives ZeRO++'s hierarchical partitioning)")
    if par.compile:
        p.add("parallel.compile", True, "is not supported with parallel.dp_engine=deepspeed (ZeRO's parameter "
              "hooks are not verified under per-block compile); set parallel.compile=false or use dp_engine=fsdp")
    if cfg.train.float8:
        p.add("train.float8", True, "is not supported with parallel.dp_engine=deepspeed; use dp_engine=fsdp")
    if cfg.train.spike_sigma:
        p.add("train.spike_sigma", cfg.train.spike_sigma,
              "needs the update held back until the guard decides, but DeepSpeed clips and updates in one "
              "engine.step() (it skips non-finite updates itself); set train.spike_sigma=0 or use dp_engine=fsdp")
    if ds.zero_stage not in ZERO_STAGES:
        p.add("parallel.deepspeed.zero_stage", ds.zero_stage,
              "must be 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters)")
    p.choice("parallel.deepspeed.offload_optimizer", ds.offload_optimizer, OFFLOAD_DEVICES)
    p.choice("parallel.deepspeed.offload_params", ds.offload_params, OFFLOAD_DEVICES)
    stage3 = ds.zero_stage == 3
    if ds.offload_params != "none" and not stage3:
        p.add("parallel.deepspeed.offload_params", ds.offload_params,
              "offloads partitioned parameters, which only ZeRO-3 has; set parallel.deepspeed.zero_stage=3")
    if ds.offload_optimizer == "nvme" and not stage3:
        p.add("parallel.deepspeed.offload_optimizer", "nvme",
              "NVMe offload (ZeRO-Infinity) needs ZeRO-3; set parallel.deepspeed.zero_stage=3 or offload to cpu")
    if "nvme" in (ds.offload_optimizer, ds.offload_params) and not ds.nvme_path:
        p.add("parallel.deepspeed.nvme_path", ds.nvme_path,
              "set it to a directory on a node-local NVMe drive (nvme offload writes its swap files there)")
    for key in ("zero_quantized_weights", "zero_quantized_gradients"):
        if getattr(ds, key) and not stage3:
            p.add(f"parallel.deepspeed.{key}", True, "is a ZeRO++ feature of ZeRO-3; set parallel.deepspeed.zero_stage=3")
    hpz = ds.zero_hpz_partition_size
    if p.positive("parallel.deepspeed.zero_hpz_partition_size", hpz) and hpz > 1:
        if not stage3:
            p.add("parallel.deepspeed.zero_hpz_partition_size", hpz,
                  "hpZ is a ZeRO++ feature of ZeRO-3; set parallel.deepspeed.zero_stage=3 or leave it at 1")
        elif par.dp % hpz:
            p.add("parallel.deepspeed.zero_hpz_partition_size", hpz,
                  f"must divide the data-parallel size {par.dp} (usually the GPUs per node)")
    for key in ("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size"):
        p.positive(f"parallel.deepspeed.{key}", getattr(ds, key))
    for key, value, fix in override_problems(dict(ds.config_overrides)):
        p.add(key, value, fix)
