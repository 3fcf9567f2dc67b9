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
from .activations import (block_activation_bytes, block_working_bytes, is_checkpointed, kept_block_bytes,
                          logits_bytes)
from .layout import (ADAM_BYTES, COMPUTE_BYTES, GRAD_BYTES, MASTER_BYTES, GiB, StageParams, block_params,
                     embedding_params, layout_name,
                     model_stage_ranges, stage_params, stages_of_rank, step_micro_batches, in_flight_micro_batches)

COMPONENTS = ("weights", "grads", "optimizer", "gathered_params", "unsharded_grads", "activations", "working",
              "logits")
REDUCE_BYTES = 4                # FSDP reduces gradients in fp32 (MixedPrecisionPolicy.reduce_dtype)


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


def _fsdp_terms(cfg: TrainConfig, sp: StageParams, head: float, n_micro: int) -> Dict[str, float]:
    """gathered_params and unsharded_grads (bytes) of one rank; ``head`` is the [norm, output] unit's
    parameter count per TP rank.

    The vocab-parallel embedding's gradient is the exception to "per TP rank": DTensor has no row-wise
    strategy for the embedding backward, so its gradient is a Partial of the whole ``vocab x hidden``
    table on every TP rank until FSDP's reduction redistributes it (``_embedding_ops.py``).
    """
    par, m = cfg.parallel, cfg.model
    fsdp = par.dp_engine == "fsdp" and par.dp > 1
    reshard = str(par.fsdp_reshard_after_forward).lower()
    embedding_grad = embedding_params(m) * (1 - 1 / par.tp) if sp.has_embedding and par.tp > 1 else 0.0
    if not fsdp:
        # No FSDP: full fp32 weights; autocast's bf16 copies live through forward, and DDP's fp32
        # gradients are part of ``grads`` (not sharded).
        return {"gathered_params": COMPUTE_BYTES * sp.total, "unsharded_grads": 0.0}
    if par.pp > 1 or reshard == "false":
        gathered = COMPUTE_BYTES * sp.total
    else:
        gathered = COMPUTE_BYTES * (2 * sp.block + head)
    accumulating = par.pp > 1 or (par.fsdp_grad_sync == "last" and n_micro > 1)
    unsharded = REDUCE_BYTES * (sp.total + embedding_grad) if accumulating else 0.0
    return {"gathered_params": gathered, "unsharded_grads": unsharded}


def _unit_reduce_bytes(cfg: TrainConfig, sp: StageParams, head: float) -> float:
    """Without accumulation: the largest FSDP unit's bf16 gradient and its fp32 reduce-scatter input."""
    par, m = cfg.parallel, cfg.model
    largest = max(sp.block, head, embedding_params(m) if sp.has_embedding and par.tp > 1 else 0.0)
    return (REDUCE_BYTES + COMPUTE_BYTES) * largest


def rank_plan(cfg: TrainConfig, pp_rank: int) -> RankPlan:
    """What pipeline rank ``pp_rank`` holds at its peak (see the module docstring)."""
    m, par, d = cfg.model, cfg.parallel, cfg.data
    n_micro = max(step_micro_batches(cfg), 1)
    tokens = d.micro_batch_size * d.seq_len
    sp = stage_params(m, par, pp_rank)
    shards = par.dp_shard if par.dp_engine == "fsdp" else 1
    local = int(-(-sp.total // shards))
    pipelined = par.pp > 1
    fsdp = par.dp_engine == "fsdp" and par.dp > 1
    head = (m.hidden_size + m.vocab_size * m.hidden_size / par.tp) if sp.has_output else 0.0
    terms: Dict[str, float] = {
        "weights": MASTER_BYTES * local,
        # Under PP, FSDP's sharded gradients appear only at the final reduce (unsharded_grads until then).
        "grads": 0 if pipelined and fsdp else GRAD_BYTES * local,
        "optimizer": ADAM_BYTES * local,
        **_fsdp_terms(cfg, sp, head, n_micro),
    }
    ranges = model_stage_ranges(m, par)
    stages = stages_of_rank(pp_rank, par)
    in_flight = in_flight_micro_batches(par, n_micro, pp_rank)
    kept = 0.0
    for local_index, stage in enumerate(stages):
        layer_ids = list(ranges[stage])
        per_micro = sum(kept_block_bytes(m, par, tokens, layer) for layer in layer_ids)
        if pipelined:  # the kept output and the received input (the schedule's fwd_cache) of the stage
            boundaries = int(stage < len(ranges) - 1)
            # The received input is the first block's input: a checkpointed block keeps it already.
            if stage > 0 and not is_checkpointed(par, layer_ids[0]):
                boundaries += 1
            per_micro += boundaries * block_activation_bytes(m, par, tokens, "boundary")
        kept += in_flight[local_index] * per_micro
    terms["activations"] = kept
    # The backward's largest transient: a block's recompute and gradients, the loss's fp32/bf16 logit
    # gradients, or (without accumulation) one unit's gradient reduction; they come one after another.
    kept_logits, logits_backward = logits_bytes(m, par, tokens, in_flight[-1] if pipelined else 1) \
        if sp.has_output else (0.0, 0.0)
    accumulating = pipelined or (par.fsdp_grad_sync == "last" and n_micro > 1)
    transients = [block_working_bytes(m, par, tokens) if sp.layers else 0.0, logits_backward]
    if fsdp and not accumulating:
        transients.append(_unit_reduce_bytes(cfg, sp, head))
    elif fsdp:  # a unit's bf16 gradient before FSDP adds it to the fp32 accumulator
        transients[1] += COMPUTE_BYTES * head     # the output projection's, while the logit gradients live
        if sp.has_embedding:
            transients.append(COMPUTE_BYTES * embedding_params(m) / (1 if par.tp > 1 else par.tp))
    terms["working"] = max(transients)
    terms["logits"] = kept_logits
    return RankPlan(pp_rank, stages, sp.layers, local, in_flight, {k: int(terms.get(k, 0)) for k in COMPONENTS})


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


__all__ = ["COMPONENTS", "MemoryEstimate", "RankPlan", "estimate_memory", "fit_problem", "rank_plan", "block_params"]
