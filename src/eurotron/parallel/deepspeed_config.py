"""eurotron's config -> DeepSpeed's config (torch-free: validation.py asks it before any process starts).

Everything that decides the numbers comes from eurotron's own keys, so a DeepSpeed run trains the same
model as an FSDP2 or single-process run: batch sizes and gradient accumulation from ``data.*``,
clipping from ``optim.grad_clip``, bf16 from ``train.precision``. The optimizer is not in this config:
eurotron's AdamW (``train/optim.py``: same hyperparameters, same weight-decay split) is handed to
``deepspeed.initialize`` as the client optimizer, and eurotron's scheduler drives its learning rate.
``parallel.deepspeed.config_overrides`` may add DeepSpeed settings, never change the derived ones.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

from ..config import TrainConfig
from ..plan.layout import step_micro_batches

ZERO_STAGES = (1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")

# Keys eurotron derives (dotted path -> the eurotron key to change instead).
DERIVED_KEYS = {
    "train_batch_size": "data.global_batch_size",
    "train_micro_batch_size_per_gpu": "data.micro_batch_size",
    "gradient_accumulation_steps": "data.global_batch_size / (data.micro_batch_size x dp)",
    "gradient_clipping": "optim.grad_clip",
    "bf16": "train.precision",
    "fp16": "train.precision (eurotron trains in bf16 or fp32, never fp16 with loss scaling)",
    "optimizer": "optim.* (eurotron's AdamW is DeepSpeed's client optimizer)",
    "scheduler": "scheduler.* (eurotron's schedule drives the learning rate)",
    "zero_allow_untested_optimizer": "nothing (needed for eurotron's AdamW)",
    "zero_force_ds_cpu_optimizer": "nothing (DeepSpeedCPUAdam needs compiled ops; eurotron's AdamW runs on CPU)",
    "zero_optimization.stage": "parallel.deepspeed.zero_stage",
    "zero_optimization.offload_optimizer": "parallel.deepspeed.offload_optimizer / nvme_path",
    "zero_optimization.offload_param": "parallel.deepspeed.offload_params / nvme_path",
    "zero_optimization.reduce_bucket_size": "parallel.deepspeed.reduce_bucket_size",
    "zero_optimization.allgather_bucket_size": "parallel.deepspeed.allgather_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size": "parallel.deepspeed.prefetch_bucket_size",
    "zero_optimization.overlap_comm": "parallel.deepspeed.overlap_comm",
    "zero_optimization.zero_quantized_weights": "parallel.deepspeed.zero_quantized_weights",
    "zero_optimization.zero_quantized_gradients": "parallel.deepspeed.zero_quantized_gradients",
    "zero_optimization.zero_hpz_partition_size": "parallel.deepspeed.zero_hpz_partition_size",
    "elasticity": "data.* (DeepSpeed's elasticity would change the batch size behind eurotron's back)",
    "pipeline": "parallel.pp (DeepSpeed's pipeline engine is not used)",
}

# Top-level DeepSpeed keys an override may set (DeepSpeed ignores unknown top-level keys silently,
# so a typo would otherwise change nothing without a word).
ALLOWED_TOP_LEVEL = (
    "zero_optimization", "communication_data_type", "prescale_gradients", "gradient_predivide_factor",
    "data_types", "activation_checkpointing", "aio", "comms_logger", "flops_profiler", "monitor_config",
    "tensorboard", "wandb", "csv_monitor", "memory_breakdown", "wall_clock_breakdown", "steps_per_print",
    "dump_state", "seq_parallel_communication_data_type", "timers", "compression_training",
)


def _offload(device: str, nvme_path: str, pin: bool) -> Dict[str, Any]:
    section: Dict[str, Any] = {"device": device, "pin_memory": pin}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


def generated_config(cfg: TrainConfig, bf16: bool, on_gpu: bool) -> Dict[str, Any]:
    """DeepSpeed's config from eurotron's, before overrides (``bf16``: the resolved compute dtype)."""
    par, d, ds = cfg.parallel, cfg.data, cfg.parallel.deepspeed
    zero: Dict[str, Any] = {
        "stage": ds.zero_stage,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size,
        "overlap_comm": ds.overlap_comm,
    }
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(ds.offload_optimizer, ds.nvme_path, on_gpu)
    if ds.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = ds.prefetch_bucket_size
        zero["zero_quantized_weights"] = ds.zero_quantized_weights
        zero["zero_quantized_gradients"] = ds.zero_quantized_gradients
        zero["zero_hpz_partition_size"] = ds.zero_hpz_partition_size
        if ds.offload_params != "none":
            zero["offload_param"] = _offload(ds.offload_params, ds.nvme_path, on_gpu)
    return {
        "train_batch_size": d.global_batch_size,
        "train_micro_batch_size_per_gpu": d.micro_batch_size,
        "gradient_accumulation_steps": step_micro_batches(cfg),
        # 0 disables clipping in eurotron and in DeepSpeed alike.
        "gradient_clipping": float(cfg.optim.grad_clip),
        # A non-finite gradient skips the update (ZeRO-1/2 in bf16 check only when asked).
        "bf16": {"enabled": bf16, "check_grad_overflow": True} if bf16 else {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # eurotron logs the steps itself
        "wall_clock_breakdown": False,
    }


def _flatten(tree: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in DERIVED_KEYS:
            out += _flatten(value, path + ".")
        else:
            out.append((path, value))
    return out


def override_problems(overrides: Dict[str, Any]) -> List[Tuple[str, Any, str]]:
    """(key, value, fix) for every override that would change a derived key or that DeepSpeed does not know."""
    problems = []
    for path, value in _flatten(overrides):
        top = path.split(".")[0]
        owner = next((DERIVED_KEYS[k] for k in DERIVED_KEYS if path == k or path.startswith(k + ".")
                      or k.startswith(path + ".")), None)
        if owner is not None:
            problems.append((f"parallel.deepspeed.config_overrides.{path}", value,
                             f"eurotron derives it; set {owner} instead"))
        elif top not in ALLOWED_TOP_LEVEL:
            problems.append((f"parallel.deepspeed.config_overrides.{top}", overrides[top],
                             f"is not a DeepSpeed setting eurotron passes on; known: {', '.join(ALLOWED_TOP_LEVEL)}"))
    return problems


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def deepspeed_config(cfg: TrainConfig, bf16: bool, on_gpu: bool) -> Dict[str, Any]:
    """The config handed to ``deepspeed.initialize``: generated, then the (validated) overrides merged in."""
    problems = override_problems(dict(cfg.parallel.deepspeed.config_overrides))
    if problems:  # validation.py reports these before any process starts; this guards direct callers
        raise ValueError("; ".join(f"{k}={v!r}: {fix}" for k, v, fix in problems))
    return _merge(generated_config(cfg, bf16, on_gpu), dict(cfg.parallel.deepspeed.config_overrides))
