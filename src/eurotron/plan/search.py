"""eurotron-plan's search: every layout of a model on N nodes of a cluster, validated as a run would be,
with its memory per GPU (``plan/memory.py``), predicted speed (``plan/throughput.py``) and the cost of a
token budget (GPU-hours, the centre's billing unit, energy). Ranked by tokens/s/GPU, feasible first.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional

from ..config import ConfigError, TrainConfig
from ..validation import validate_train_config
from .layout import GiB, step_micro_batches
from .memory import estimate_memory
from .throughput import StepTime, predict_step

TENSOR_PARALLEL = (1, 2, 4, 8)
# Micro-batches of 1 and 2: what the layout model is checked for against torch's MemTracker (at 4 with
# full recompute it read 10.4% low on marenostrum5's TP4 x FSDP64 layout).
MICRO_BATCHES = (1, 2)
RECOMPUTE = ("none", "selective_op", "selective", "full")
MAX_PIPELINE = 16
# The layout model reads 1-7% under torch's MemTracker (tests/test_memory_tracker.py): a planned layout
# must fit with this much on top of the estimate and cluster.memory_reserve_gb.
PLAN_HEADROOM = 1.08
SECONDS_PER_DAY = 86400.0


@dataclass
class PlannedLayout:
    tp: int
    pp: int
    pp_virtual_stages: int
    dp_shard: int
    dp_replicate: int
    micro_batch_size: int
    activation_checkpoint: str
    pp_schedule: str
    tokens_per_s_per_gpu: float
    mfu: float
    step_time_s: float
    memory_gib: float           # the busiest rank's estimate
    fits: bool
    nodes: int
    gpus: int
    wall_clock_days: float
    gpu_hours: float
    node_hours: float
    billed: float               # in the cluster's billing unit
    billing_unit: str
    energy_mwh: Optional[float]
    memory_by_component_gib: Dict[str, float]
    step_parts_s: Dict[str, float]

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        """One line: the layout and what it predicts (eurotron-launch prints it for what it submits)."""
        virtual = f"x{self.pp_virtual_stages}" if self.pp_virtual_stages > 1 else ""
        energy = f", {self.energy_mwh:,.0f} MWh" if self.energy_mwh is not None else ""
        return (f"tp{self.tp} pp{self.pp}{virtual} ({self.pp_schedule}) dp_shard{self.dp_shard} "
                f"dp_replicate{self.dp_replicate} mbs{self.micro_batch_size} ac={self.activation_checkpoint}: "
                f"{self.tokens_per_s_per_gpu:,.0f} tok/s/GPU, MFU {self.mfu:.1%}, {self.step_time_s:.2f} s/step, "
                f"{self.memory_gib:.1f} GiB/GPU{'' if self.fits else ' (does not fit)'}; {self.nodes} node(s), "
                f"{self.wall_clock_days:,.1f} days, {self.gpu_hours:,.0f} device-hours, billed {self.billed:,.0f} "
                f"{self.billing_unit}{energy}")


def evaluate(cfg: TrainConfig, tokens: float) -> PlannedLayout:
    """Memory, speed and cost of exactly ``cfg``'s layout for a budget of ``tokens``."""
    par, c = cfg.parallel, cfg.cluster
    step: StepTime = predict_step(cfg.model, par, cfg.data, c, step_micro_batches(cfg), par.pp_virtual_stages)
    memory = estimate_memory(cfg)
    peak = memory.peak
    fits = (c.gpu_memory_gb <= 0
            or peak.total_bytes * PLAN_HEADROOM + c.memory_reserve_gb * GiB <= c.gpu_memory_gb * GiB)
    gpus = step.gpus
    nodes = math.ceil(gpus / max(c.gpus_per_node, 1))
    seconds = tokens / (step.tokens_per_s_per_gpu * gpus)
    gpu_hours = seconds / 3600 * gpus
    node_hours = seconds / 3600 * nodes
    per_unit = c.billing.devices_per_unit or max(c.gpus_per_node, 1)
    return PlannedLayout(
        tp=par.tp, pp=par.pp, pp_virtual_stages=par.pp_virtual_stages, dp_shard=par.dp_shard,
        dp_replicate=par.dp_replicate, micro_batch_size=cfg.data.micro_batch_size,
        activation_checkpoint=par.activation_checkpoint, pp_schedule=par.pp_schedule,
        tokens_per_s_per_gpu=step.tokens_per_s_per_gpu, mfu=step.mfu, step_time_s=step.step_s,
        memory_gib=peak.total_bytes / GiB, fits=fits, nodes=nodes, gpus=gpus,
        wall_clock_days=seconds / SECONDS_PER_DAY, gpu_hours=gpu_hours, node_hours=node_hours,
        billed=gpu_hours / per_unit, billing_unit=c.billing.unit,
        energy_mwh=(node_hours * c.node_power_w / 1e6) if c.node_power_w > 0 else None,
        memory_by_component_gib={name: value / GiB for name, value in peak.bytes.items()},
        step_parts_s={"compute": step.compute_s, "tp_communication": step.tp_comm_s, "pp_bubble": step.pp_bubble_s,
                      "pp_sends": step.pp_send_s, "dp_communication_exposed": step.dp_exposed_s},
    )


def _layouts(cfg: TrainConfig, gpus: int) -> Iterator[Dict[str, object]]:
    per_node = max(cfg.cluster.gpus_per_node, 1)
    layers = cfg.model.num_layers
    pipelines = [p for p in range(1, min(layers, MAX_PIPELINE) + 1) if layers % p == 0]
    for tp, pp in itertools.product(TENSOR_PARALLEL, pipelines):
        if tp > per_node or gpus % (tp * pp):
            continue
        dp = gpus // (tp * pp)
        shardings = {(dp, 1)}
        in_node = per_node // tp  # HSDP: shard inside a node, replicate across nodes
        if 1 < in_node < dp and dp % in_node == 0:
            shardings.add((in_node, dp // in_node))
        schedules = [("1f1b", 1)] + ([("interleaved_1f1b", 2)] if pp > 1 and layers % (2 * pp) == 0 else [])
        for (shard, replicate), (schedule, virtual), mbs, ac in itertools.product(
                sorted(shardings), schedules, MICRO_BATCHES, RECOMPUTE):
            yield {"tp": tp, "pp": pp, "dp_shard": shard, "dp_replicate": replicate, "pp_schedule": schedule,
                   "pp_virtual_stages": virtual, "micro_batch_size": mbs, "activation_checkpoint": ac}


def _with_layout(cfg: TrainConfig, layout: Dict[str, object]) -> TrainConfig:
    out = copy.deepcopy(cfg)
    par = out.parallel
    for key in ("tp", "pp", "dp_shard", "dp_replicate", "pp_schedule", "pp_virtual_stages", "activation_checkpoint"):
        setattr(par, key, layout[key])
    par.sequence_parallel = par.tp > 1
    par.dp_engine = "fsdp"
    out.data.micro_batch_size = int(layout["micro_batch_size"])
    return out


def is_valid(cfg: TrainConfig) -> bool:
    """Whether a run would accept ``cfg`` (the planner's candidates need no data directory yet)."""
    probe = copy.deepcopy(cfg)
    probe.data.path = probe.data.path if probe.data.path not in ("", "???") else "<planned>"
    try:
        validate_train_config(probe)
    except ConfigError:
        return False
    return True


def search(cfg: TrainConfig, nodes: int, tokens: float) -> List[PlannedLayout]:
    """Every valid layout on ``nodes`` nodes, feasible ones first, each group by tokens/s/GPU."""
    gpus = nodes * max(cfg.cluster.gpus_per_node, 1)
    planned = [evaluate(candidate, tokens) for candidate in
               (_with_layout(cfg, layout) for layout in _layouts(cfg, gpus)) if is_valid(candidate)]
    return sorted(planned, key=lambda p: (not p.fits, -p.tokens_per_s_per_gpu))
