"""The layout report printed at start: mesh, what each pipeline stage holds, parameters and bytes per rank."""

from __future__ import annotations

import socket
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..config import TrainConfig
from ..plan.layout import STATE_BYTES_PER_PARAM, layout_name, stage_to_rank, step_micro_batches
from ..plan.memory import estimate_memory
from .activation import checkpointed_layers


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def stage_contents(ranges: Sequence[range], stage: int) -> str:
    parts = []
    if stage == 0:
        parts.append("embedding")
    layers = ranges[stage]
    parts.append(f"layers {layers.start}-{layers.stop - 1}" if len(layers) > 1 else f"layer {layers.start}")
    if stage == len(ranges) - 1:
        parts.append("norm + output")
    return " + ".join(parts)


def gather_counts(local: int, device: torch.device) -> List[int]:
    """Every rank's local parameter count, on every rank (one all-gather)."""
    if not dist.is_initialized():
        return [local]
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([local], dtype=torch.int64, device=device))
    return [int(c) for c in counts]


def format_layout(cfg: TrainConfig, ranges: Sequence[range], per_rank: Sequence[int], total_params: int,
                  backend: str, device: torch.device) -> str:
    """The report; ``per_rank`` holds every rank's local parameter count, in rank order."""
    par = cfg.parallel
    checkpointed = checkpointed_layers(par.activation_checkpoint, par.activation_checkpoint_every,
                                       list(range(cfg.model.num_layers)))
    n_micro = step_micro_batches(cfg)
    lines = [
        f"layout: {layout_name(par)} = {par.world_size} rank(s) on {device.type} ({backend}); mesh dims (pp, dp_replicate, dp_shard, tp)",
        f"  tensor parallel: {'tp=' + str(par.tp) + (' + sequence parallel' if par.sequence_parallel else '') if par.tp > 1 else 'off'}"
        f"; data parallel: {par.dp_engine + ' x' + str(par.dp) if par.dp > 1 else 'off'}"
        f"; activation checkpointing: {par.activation_checkpoint}"
        f"{' (layers ' + ','.join(map(str, checkpointed)) + ')' if par.activation_checkpoint == 'selective' else ''}"
        f"{' (every layer, op level: matmul/attention outputs kept)' if par.activation_checkpoint == 'selective_op' else ''}"
        f"; compile: {'on' if par.compile else 'off'}",
        f"  batch: {cfg.data.global_batch_size} sequences x {cfg.data.seq_len} tokens per step = "
        f"{n_micro} micro-batch(es) of {cfg.data.micro_batch_size} per data-parallel rank",
    ]
    if par.pp > 1:
        lines.append(f"  pipeline: schedule {par.pp_schedule}, {len(ranges)} stages "
                     f"({par.pp_virtual_stages} per rank)")
        for stage in range(len(ranges)):
            rank = stage_to_rank(stage, par.pp, par.pp_schedule)
            lines.append(f"    stage {stage} on pp rank {rank}: {stage_contents(ranges, stage)}")
    per_stage = max(1, len(per_rank) // par.pp)
    estimate = estimate_memory(cfg)
    for pp_rank in range(par.pp):
        counts = per_rank[pp_rank * per_stage:(pp_rank + 1) * per_stage]
        lo, hi = min(counts), max(counts)
        span = f"{lo:,}" if lo == hi else f"{lo:,} - {hi:,}"
        label = f"pp rank {pp_rank}" if par.pp > 1 else "each rank" if len(per_rank) > 1 else "the rank"
        plan = estimate.ranks[pp_rank]
        lines.append(f"  parameters on {label}: {span} (est. {human_bytes(hi * STATE_BYTES_PER_PARAM)} "
                     f"weights + grads + AdamW at {STATE_BYTES_PER_PARAM} B/param; "
                     f"{human_bytes(plan.total_bytes)} at the peak of a bf16 GPU step, plan/memory.py)")
    lines.append(f"  model: {cfg.model.name}, {total_params:,} parameters")
    return "\n".join(lines)


def node_placement(cfg: TrainConfig) -> Optional[str]:
    """Which ranks each host runs and whether every TP group sits inside one node (collective: every rank
    calls it); None on one host. Megatron's order puts TP groups (consecutive ranks) inside a node."""
    if not dist.is_initialized():
        return None
    hosts: List[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    if len(set(hosts)) <= 1:
        return None
    by_host: Dict[str, List[int]] = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    tp = cfg.parallel.tp
    tp_inside = all(len({hosts[r] for r in range(g, g + tp)}) == 1 for g in range(0, len(hosts), tp))
    stage_hosts = [sorted({hosts[r] for r in range(len(hosts)) if r // (len(hosts) // cfg.parallel.pp) == p})
                   for p in range(cfg.parallel.pp)]
    text = "; ".join(f"{h}: ranks {','.join(map(str, rs))}" for h, rs in by_host.items())
    pp = (", pp ranks on " + " | ".join("+".join(h) for h in stage_hosts)) if cfg.parallel.pp > 1 else ""
    return (f"  nodes: {len(by_host)} ({text}); tp groups {'inside one node each' if tp_inside else 'SPAN NODES'}"
            f"{pp}")
