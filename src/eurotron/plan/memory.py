"""GPU memory per rank of a training layout, from the config alone (torch-free; no model is built).

``estimate_memory(cfg)`` gives one ``RankPlan`` per pipeline rank — the busiest of its DP x TP ranks
(FSDP pads every shard to the same size, so they are equal) — with its bytes by component:

* ``weights`` / ``grads`` / ``optimizer``: the fp32 master weights, fp32 sharded gradients and AdamW's
  two fp32 moments of the rank's parameters (``plan.layout.stage_params``, split over ``tp``, sharded
  over ``dp_shard`` by FSDP/HSDP, whole under DDP). Under PP the schedule reduces only after the last
  micro-batch, so at the peak the sharded gradients do not exist yet (``unsharded_grads`` hold them).
* ``gathered_params``: FSDP2's bf16 compute copies. Under PP the stage stays gathered from its first
  forward to the schedule's final reduce (``reshard_after_backward`` is off between micro-batches and,
  with ``fsdp_reshard_after_forward=auto``, after forward); without PP the running and the prefetched
  block plus the ``[norm, output]`` unit (never resharded under auto); ``false`` keeps everything.
* ``unsharded_grads``: FSDP2 accumulates unsharded gradients in fp32 (its ``reduce_dtype``) while
  gradient sync is off: the whole stage under PP, the whole model with ``fsdp_grad_sync=last`` and
  more than one micro-batch; otherwise one block's fp32 reduce-scatter input at a time.
* ``activations``: what autograd keeps per micro-batch in flight (``plan.activations``, per
  ``activation_checkpoint`` mode) times the micro-batches the schedule holds on this rank
  (``plan.layout.in_flight_micro_batches``), plus the stage's received input and kept output.
* ``working``: the largest transient of the backward, which come one after another: one block's
  recomputed activations and gradients, the loss's fp32 and bf16 logit gradients, or (without
  accumulation) one FSDP unit's bf16 gradient and fp32 reduce-scatter input.
* ``logits``: on the last stage, the bf16 logits and the fp32 log-softmax the loss keeps, per
  micro-batch in flight (vocab-sharded over ``tp`` by ``loss_parallel``).

Checked against PyTorch's MemTracker on the real parallelized model under fake tensors
(``train/memory_measure.py``, tests/test_memory_tracker.py). Allocator fragmentation, NCCL buffers and
the CUDA/ROCm context are what ``cluster.memory_reserve_gb`` keeps free on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..config import TrainConfig
from .deepspeed_memory import deepspeed_memory, host_problem, startup_problem
from .activations import (block_activation_bytes, block_working_bytes, is_checkpointed, kept_block_bytes,
                          logits_bytes)
from .layout import (ADAM_BYTES, COMPUTE_BYTES, GRAD_BYTES, MASTER_BYTES, GiB, StageParams, block_params,
                     embedding_params,
                     in_flight_micro_batches, layout_name, model_stage_ranges, stage_params, stages_of_rank,
                     step_micro_batches)

COMPONENTS = ("weights", "grads", "optimizer", "gathered_params", "unsharded_grads", "activations", "working",
              "logits")
REDUCE_BYTES = GRAD_BYTES      # FSDP reduces and accumulates gradients in fp32 (its reduce_dtype)


@dataclass
class RankPlan:
    """One pipeline rank (the busiest of its DP x TP ranks): what it holds at its peak."""

    pp_rank: int
    stages: List[int]
    layers: int
    params: int                 # local parameter elements after TP and FSDP sharding
    in_flight: List[int]        # micro-batches whose activations it holds, per local stage
    bytes: Dict[str, int] = field(default_factory=dict)   # by component (COMPONENTS)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def state_bytes(self) -> int:
        return self.bytes["weights"] + self.bytes["grads"] + self.bytes["optimizer"]

    @property
    def fsdp_bytes(self) -> int:
        return self.bytes["gathered_params"] + self.bytes["unsharded_grads"]

    @property
    def activation_bytes(self) -> int:
        return self.bytes["activations"]

    @property
    def logits_bytes(self) -> int:
        return self.bytes["logits"]

    def format(self) -> str:
        parts = ", ".join(f"{name} {self.bytes[name] / GiB:.1f}" for name in COMPONENTS if self.bytes[name])
        return (f"pp rank {self.pp_rank}: {self.layers} layers, {self.params:,} params/rank, "
                f"{'+'.join(map(str, self.in_flight))} micro-batch(es) in flight: {parts} "
                f"= {self.total_bytes / GiB:.1f} GiB")


@dataclass
class MemoryEstimate:
    model: str
    layout: str
    micro_batches: int
    ranks: List[RankPlan] = field(default_factory=list)

    @property
    def peak(self) -> RankPlan:
        return max(self.ranks, key=lambda r: r.total_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.peak.total_bytes

    def fits(self, gpu_memory_gb: float, reserve_gb: float) -> bool:
        return self.peak_bytes + reserve_gb * GiB <= gpu_memory_gb * GiB

    def format(self) -> str:
        lines = [f"memory estimate (GiB): {self.model} on {self.layout}, {self.micro_batches} micro-batch(es) per step"]
        lines += ["  " + r.format() for r in self.ranks]
        return "\n".join(lines)


def _uses_fsdp(cfg: TrainConfig) -> bool:
    return cfg.parallel.dp_engine == "fsdp" and cfg.parallel.dp > 1


def _accumulates_unsharded(cfg: TrainConfig, n_micro: int) -> bool:
    """FSDP keeps unsharded fp32 gradients between backwards: always under PP (the schedule reduces
    after its last micro-batch), and with fsdp_grad_sync=last over several micro-batches."""
    par = cfg.parallel
    return _uses_fsdp(cfg) and (par.pp > 1 or (par.fsdp_grad_sync == "last" and n_micro > 1))


def _embedding_grad_params(cfg: TrainConfig, sp: StageParams) -> float:
    """Elements of the embedding's unsharded gradient on one rank: the whole ``vocab x hidden`` table
    even under TP — DTensor has no row-wise strategy for the embedding backward, so the gradient is a
    Partial of the full table until FSDP's reduction redistributes it (torch's ``_embedding_ops.py``)."""
    return embedding_params(cfg.model) if sp.has_embedding else 0.0


def _fsdp_terms(cfg: TrainConfig, sp: StageParams, head: float, n_micro: int) -> Dict[str, float]:
    """gathered_params and unsharded_grads (bytes) of one rank; ``head`` is the [norm, output] unit's
    parameter count per TP rank."""
    par = cfg.parallel
    if not _uses_fsdp(cfg):
        # No FSDP: full fp32 weights; autocast's bf16 copies live through forward, and the fp32
        # gradients (DDP's too) are ``grads``.
        return {"gathered_params": COMPUTE_BYTES * sp.total, "unsharded_grads": 0.0}
    if par.pp > 1 or str(par.fsdp_reshard_after_forward).lower() == "false":
        gathered = COMPUTE_BYTES * sp.total
    else:  # the running and the prefetched block, and [norm, output] (never resharded under auto)
        gathered = COMPUTE_BYTES * (2 * sp.block + head)
    unsharded = 0.0
    if _accumulates_unsharded(cfg, n_micro):
        embedding_per_tp = embedding_params(cfg.model) / par.tp if sp.has_embedding else 0.0
        unsharded = REDUCE_BYTES * (sp.total - embedding_per_tp + _embedding_grad_params(cfg, sp))
    return {"gathered_params": gathered, "unsharded_grads": unsharded}


def _backward_transient(cfg: TrainConfig, sp: StageParams, head: float, tokens: int, logits_backward: float,
                        n_micro: int) -> float:
    """The backward's largest transient on top of what is kept; they come one after another: a block's
    recompute and gradients; the loss's logit gradients (with, under accumulation, the output
    projection's bf16 gradient); the embedding's bf16 gradient before it is accumulated; or, without
    accumulation, the largest FSDP unit's bf16 gradient and its fp32 reduce-scatter input."""
    m, par = cfg.model, cfg.parallel
    block = block_working_bytes(m, par, tokens) if sp.layers else 0.0
    if not _uses_fsdp(cfg):
        return max(block, logits_backward)
    embedding = _embedding_grad_params(cfg, sp)
    if _accumulates_unsharded(cfg, n_micro):
        return max(block, logits_backward + COMPUTE_BYTES * head, COMPUTE_BYTES * embedding)
    # Reducing: the bf16 gradient, redistributed over TP first (the embedding's Partial whole table
    # becomes its vocab shard), then copied to fp32 for the reduce-scatter.
    unit = (REDUCE_BYTES + COMPUTE_BYTES) * max(sp.block, head, embedding / par.tp)
    if embedding and par.tp > 1:
        unit = max(unit, COMPUTE_BYTES * embedding + (REDUCE_BYTES + COMPUTE_BYTES) * embedding / par.tp)
    return max(block, logits_backward, unit)


def _kept_activations(cfg: TrainConfig, pp_rank: int, tokens: int, in_flight: List[int]) -> float:
    """Activations the rank keeps: per local stage, its blocks' saved tensors times the micro-batches in
    flight, plus under PP the stage's kept output and received input (the schedule's ``fwd_cache``)."""
    m, par = cfg.model, cfg.parallel
    ranges = model_stage_ranges(m, par)
    kept = 0.0
    for local_index, stage in enumerate(stages_of_rank(pp_rank, par)):
        layer_ids = list(ranges[stage])
        per_micro = sum(kept_block_bytes(m, par, tokens, layer) for layer in layer_ids)
        if par.pp > 1:
            boundaries = int(stage < len(ranges) - 1)
            # The received input is the first block's input: a checkpointed block keeps it already.
            if stage > 0 and not is_checkpointed(par, layer_ids[0]):
                boundaries += 1
            per_micro += boundaries * block_activation_bytes(m, par, tokens, "boundary")
        kept += in_flight[local_index] * per_micro
    return kept


def rank_plan(cfg: TrainConfig, pp_rank: int) -> RankPlan:
    """What pipeline rank ``pp_rank`` holds at its peak (see the module docstring)."""
    m, par, d = cfg.model, cfg.parallel, cfg.data
    n_micro = max(step_micro_batches(cfg), 1)
    tokens = d.micro_batch_size * d.seq_len
    sp = stage_params(m, par, pp_rank)
    local = int(-(-sp.total // (par.dp_shard if par.dp_engine == "fsdp" else 1)))
    head = (m.hidden_size + embedding_params(m) / par.tp) if sp.has_output else 0.0
    in_flight = in_flight_micro_batches(par, n_micro, pp_rank)
    kept_logits, logits_backward = (logits_bytes(m, par, tokens, in_flight[-1] if par.pp > 1 else 1)
                                    if sp.has_output else (0.0, 0.0))
    terms: Dict[str, float] = {
        "weights": MASTER_BYTES * local,
        # Under PP, FSDP's sharded gradients appear only at the final reduce (unsharded_grads until then).
        "grads": 0 if par.pp > 1 and _uses_fsdp(cfg) else GRAD_BYTES * local,
        "optimizer": ADAM_BYTES * local,
        **_fsdp_terms(cfg, sp, head, n_micro),
        "activations": _kept_activations(cfg, pp_rank, tokens, in_flight),
        "working": _backward_transient(cfg, sp, head, tokens, logits_backward, n_micro),
        "logits": kept_logits,
    }
    if par.dp_engine == "deepspeed":
        # ZeRO's stage and offload decide what state stays on the GPU (bf16 weights included): one figure;
        # ZeRO-3 gathers a module at a time, the running one and the prefetched one, as FSDP does.
        gathered = COMPUTE_BYTES * (2 * sp.block + head) if par.deepspeed.zero_stage == 3 else 0
        terms.update(weights=deepspeed_memory(cfg, local).gpu_state_bytes, grads=0, optimizer=0,
                     gathered_params=gathered, unsharded_grads=0)
    return RankPlan(pp_rank, stages_of_rank(pp_rank, par), sp.layers, local, in_flight,
                    {k: int(terms[k]) for k in COMPONENTS})


def estimate_memory(cfg: TrainConfig) -> MemoryEstimate:
    """Bytes per pipeline rank of ``cfg``'s model, layout and batch (see the module docstring)."""
    est = MemoryEstimate(model=cfg.model.name, layout=layout_name(cfg.parallel),
                         micro_batches=step_micro_batches(cfg))
    est.ranks = [rank_plan(cfg, r) for r in range(cfg.parallel.pp)]
    return est


def fit_problem(cfg: TrainConfig, est: Optional[MemoryEstimate] = None) -> Optional[str]:
    """None when the layout fits cluster.gpu_memory_gb (or no GPU memory is declared), else why not."""
    c = cfg.cluster
    if c.gpu_memory_gb <= 0:
        return None
    est = est or estimate_memory(cfg)
    params = est.ranks[0].params if est.ranks else 0  # DeepSpeed runs pp=1 tp=1: the whole model
    largest = max(embedding_params(cfg.model), sum(block_params(cfg.model)))
    ds_problem = startup_problem(cfg, params, largest) or host_problem(cfg, params, max(c.gpus_per_node, 1))
    if ds_problem:
        return ds_problem
    if est.fits(c.gpu_memory_gb, c.memory_reserve_gb):
        return None
    peak = est.peak
    b = peak.bytes
    return (f"needs about {peak.total_bytes / GiB:.1f} GiB on pp rank {peak.pp_rank} "
            f"({peak.state_bytes / GiB:.1f} weights+grads+AdamW, {peak.fsdp_bytes / GiB:.1f} FSDP gathered "
            f"weights+unsharded grads, {(b['activations'] + b['working']) / GiB:.1f} activations, "
            f"{b['logits'] / GiB:.1f} logits) but a {c.gpu_model or 'GPU'} has {c.gpu_memory_gb:g} GiB, "
            f"{c.memory_reserve_gb:g} GiB of it reserved; shard more (parallel.dp_shard, parallel.tp, parallel.pp), "
            f"set parallel.activation_checkpoint=full or lower data.micro_batch_size")


__all__ = ["COMPONENTS", "GiB", "MemoryEstimate", "RankPlan", "estimate_memory", "fit_problem", "rank_plan"]
