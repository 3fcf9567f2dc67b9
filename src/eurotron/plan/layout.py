"""The layout model: every fact about a parallel layout that does not need torch, written once.

Asked by config validation, ``parallel/`` (pipeline split, schedules, FSDP), the layout report,
the launcher and the memory estimate (``plan/memory.py``); none of them restates this arithmetic.

* ``SCHEDULES``: pipeline schedule name -> ``Schedule`` (the torch.distributed.pipelining class, by
  name, resolved in ``parallel/pipeline.py``; stages per rank; loop or V placement; split backward);
* stage layer ranges and stage <-> pipeline-rank placement;
* the micro-batch count of a step and the world size of a layout;
* parameters per block / embedding / output and the bytes of training state per parameter;
* the micro-batches each pipeline rank holds in flight under its schedule (checked against torch's own
  Interleaved1F1B action lists), and the forward/backward order that reproduces its peak.

Importing this module imports no torch (tests/test_plan_layout.py checks it in a fresh interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import ModelConfig, ParallelConfig, TrainConfig

# ------------------------------------------------------------------------------------------ bytes
MASTER_BYTES = 4                # fp32 master weight (FSDP's sharded parameter)
GRAD_BYTES = 4                  # fp32 gradient (FSDP reduces in fp32: MixedPrecisionPolicy.reduce_dtype)
ADAM_BYTES = 8                  # AdamW's exp_avg and exp_avg_sq, fp32
STATE_BYTES_PER_PARAM = MASTER_BYTES + GRAD_BYTES + ADAM_BYTES
COMPUTE_BYTES = 2               # bf16 compute copies (FSDP's param_dtype) and activations
GiB = 2**30


# -------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    name: str                   # the config value (parallel.pp_schedule)
    torch_class: str            # torch.distributed.pipelining.schedules.get_schedule_class name
    multi_stage: bool           # runs pp_virtual_stages > 1 stages per rank
    v_placement: bool           # rank r holds stages r and 2*pp-1-r (else loop: stage s on s % pp)
    split_backward: bool        # input- and weight-gradient steps apart (DDP's reducer cannot follow)
    stages_per_rank: Optional[int] = None   # required pp_virtual_stages, where the schedule fixes it
    rounds: bool = False        # micro-batches go in rounds of pp (interleaved: n_micro % rounds == 0)
    min_micro_per_stage: int = 0  # needs at least this many micro-batches per stage (DualPipeV: 1)

    def micro_batch_problem(self, n_micro: int, pp: int) -> Optional[str]:
        """Why ``n_micro`` micro-batches per step cannot run on ``pp`` ranks, or None."""
        if n_micro < pp:
            return f"fewer than parallel.pp={pp}"
        stages = (self.stages_per_rank or 1) * pp
        if self.min_micro_per_stage and n_micro < self.min_micro_per_stage * stages:
            return f"{self.name} needs at least one per stage ({self.stages_per_rank or 1} x parallel.pp = {stages})"
        if self.rounds:
            rounds = max(1, n_micro // pp)
            if n_micro % rounds:
                return (f"{self.name} needs a multiple of {rounds} (rounds of parallel.pp={pp}); "
                        f"a multiple of parallel.pp always works")
        return None


SCHEDULES: Dict[str, Schedule] = {s.name: s for s in (
    Schedule("gpipe", "GPipe", multi_stage=False, v_placement=False, split_backward=False),
    Schedule("1f1b", "1F1B", multi_stage=False, v_placement=False, split_backward=False),
    Schedule("interleaved_1f1b", "Interleaved1F1B", multi_stage=True, v_placement=False, split_backward=False,
             rounds=True),
    Schedule("looped_bfs", "LoopedBFS", multi_stage=True, v_placement=False, split_backward=False),
    Schedule("interleaved_zb", "InterleavedZeroBubble", multi_stage=True, v_placement=False, split_backward=True,
             rounds=True),
    Schedule("zbv_zero_bubble", "ZBVZeroBubble", multi_stage=True, v_placement=True, split_backward=True,
             stages_per_rank=2),
    Schedule("dualpipev", "DualPipeV", multi_stage=True, v_placement=True, split_backward=True,
             stages_per_rank=2, min_micro_per_stage=1),
)}
MULTI_STAGE_SCHEDULES = tuple(n for n, s in SCHEDULES.items() if s.multi_stage)


def schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline schedule {name!r}; expected one of {', '.join(SCHEDULES)}") from None


# ----------------------------------------------------------------------------------- stage split
def num_stages(par: ParallelConfig) -> int:
    """Pipeline stages of the whole model (1 without PP)."""
    return par.pp * par.pp_virtual_stages if par.pp > 1 else 1


def stage_layer_counts(num_layers: int, stages: int, explicit: Sequence[int] = ()) -> List[int]:
    """Layers per stage: ``explicit`` when given, else an even split with the remainder on the first
    stages (the last stage also carries the output projection and the loss)."""
    if explicit:
        if len(explicit) != stages or sum(explicit) != num_layers or min(explicit) < 1:
            raise ValueError(f"pp_layers_per_stage={list(explicit)} must have {stages} entries >= 1 "
                             f"summing to {num_layers}")
        return list(explicit)
    if num_layers < stages:
        raise ValueError(f"{stages} pipeline stages need at least as many layers, got {num_layers}")
    base, extra = divmod(num_layers, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


def stage_layer_ranges(num_layers: int, stages: int, explicit: Sequence[int] = ()) -> List[range]:
    ranges, start = [], 0
    for count in stage_layer_counts(num_layers, stages, explicit):
        ranges.append(range(start, start + count))
        start += count
    return ranges


def stage_to_rank(stage: int, pp: int, schedule_name: str) -> int:
    """The pipeline rank holding ``stage``: loop placement, or V placement for V schedules."""
    if schedule(schedule_name).v_placement:
        block, offset = divmod(stage, pp)
        return offset if block % 2 == 0 else pp - 1 - offset
    return stage % pp


def stages_of_rank(pp_rank: int, par: ParallelConfig) -> List[int]:
    """The stages pipeline rank ``pp_rank`` runs ([0] without PP)."""
    if par.pp == 1:
        return [0]
    return [s for s in range(num_stages(par)) if stage_to_rank(s, par.pp, par.pp_schedule) == pp_rank]


def model_stage_ranges(model: ModelConfig, par: ParallelConfig) -> List[range]:
    """The layer range of every stage of ``model`` under ``par``."""
    return stage_layer_ranges(model.num_layers, num_stages(par), par.pp_layers_per_stage if par.pp > 1 else ())


# ---------------------------------------------------------------------------- batch and world size
def micro_batch_count(global_batch: int, micro_batch: int, dp: int) -> int:
    """Micro-batches per data-parallel rank and step (validation checks the division is exact)."""
    return global_batch // max(sequences_per_micro_step(micro_batch, dp), 1)


def sequences_per_micro_step(micro_batch: int, dp: int) -> int:
    """Sequences one micro-batch step takes over all data-parallel ranks; the global batch must be a
    multiple of it."""
    return micro_batch * max(dp, 1)


def step_micro_batches(cfg: TrainConfig) -> int:
    return micro_batch_count(cfg.data.global_batch_size, cfg.data.micro_batch_size, cfg.parallel.dp)


def layout_name(par: ParallelConfig) -> str:
    return f"pp={par.pp} x dp_replicate={par.dp_replicate} x dp_shard={par.dp_shard} x tp={par.tp}"


def world_size_problem(par: ParallelConfig, launched: int) -> Optional[str]:
    """Why ``launched`` processes cannot run layout ``par``, or None when they match."""
    if launched == par.world_size:
        return None
    hint = " (parallel=single)" if launched == 1 else ""
    return (f"the mesh needs pp*dp_replicate*dp_shard*tp={par.world_size} processes but {launched} were "
            f"launched; launch {par.world_size} processes (torchrun --nproc-per-node={par.world_size} "
            f"--no-python eurotron-train ..., or eurotron-launch) or pick a layout for {launched}{hint}")


# ------------------------------------------------------------------------------------- parameters
def block_params(m: ModelConfig) -> Tuple[int, int]:
    """(parameters split over TP, replicated parameters) of one transformer block."""
    h, hd = m.hidden_size, m.resolved_head_dim
    attention = h * hd * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = (3 if m.mlp == "swiglu" else 2) * h * m.ffn_hidden_size
    replicated = 2 * h + (2 * hd if m.qk_norm else 0) + (2 if m.mlp == "xielu" else 0)
    return attention + mlp, replicated


def embedding_params(m: ModelConfig) -> int:
    return m.vocab_size * m.hidden_size


def output_params(m: ModelConfig) -> int:
    """The final norm and, untied, the output projection (tied: counted with the embedding)."""
    return m.hidden_size + (0 if m.tie_embeddings else m.vocab_size * m.hidden_size)


def total_params(m: ModelConfig) -> int:
    split, replicated = block_params(m)
    return m.num_layers * (split + replicated) + embedding_params(m) + output_params(m)


@dataclass(frozen=True)
class StageParams:
    """Parameters of one pipeline rank's stages, per TP rank (before data-parallel sharding)."""

    layers: int
    has_embedding: bool
    has_output: bool
    block: float                # one block's parameters on one TP rank
    total: float                # all of them: blocks, embedding, norm + output (a tied copy counts)


def stage_params(m: ModelConfig, par: ParallelConfig, pp_rank: int) -> StageParams:
    ranges = model_stage_ranges(m, par)
    stages = stages_of_rank(pp_rank, par)
    layers = sum(len(ranges[s]) for s in stages)
    has_embedding, has_output = 0 in stages, len(ranges) - 1 in stages
    split, replicated = block_params(m)
    block = split / par.tp + replicated
    total = layers * block
    if has_embedding:
        total += embedding_params(m) / par.tp
    if has_output:
        # Tied and on another rank than the embedding, the output holds its own copy (pipeline.py).
        tied_here = m.tie_embeddings and has_embedding
        total += m.hidden_size + (0 if tied_here else embedding_params(m) / par.tp)
    return StageParams(layers, has_embedding, has_output, block, total)


# ------------------------------------------------------------------------- micro-batches in flight
def _chunk_stages(par: ParallelConfig, n_micro: int, pp_rank: int) -> Tuple[int, List[int]]:
    """(forwards before the first backward, local stage of each forward in schedule order).

    The in-flight peak of each schedule on pipeline rank ``pp_rank`` (torch.distributed.pipelining):
    1F1B warms up ``pp - 1 - rank`` forwards then runs one forward before each backward; interleaved
    schedules warm up ``(v - 1) * per_round + 2 * (pp - 1 - rank)`` forwards over their local stages,
    ``per_round`` micro-batches per local stage in turn; GPipe and looped BFS run every forward first.
    Zero-bubble and V schedules are taken as interleaved ones (their W steps free no activations).
    """
    v = len(stages_of_rank(pp_rank, par))
    if par.pp == 1:
        return 1, [0] * n_micro
    name = schedule(par.pp_schedule).name
    if name == "gpipe":
        return n_micro, [0] * n_micro
    if name == "1f1b":
        return min(par.pp - pp_rank, n_micro), [0] * n_micro
    per_round = n_micro // max(1, n_micro // par.pp)
    order = [(i // per_round) % v for i in range(n_micro * v)]
    if name == "looped_bfs":
        return n_micro * v, sorted(order)
    warmup = min((v - 1) * per_round + 2 * (par.pp - 1 - pp_rank), n_micro * v)
    return min(warmup + 1, n_micro * v), order


def in_flight_micro_batches(par: ParallelConfig, n_micro: int, pp_rank: int) -> List[int]:
    """Micro-batches whose activations pipeline rank ``pp_rank`` holds at its peak, per local stage."""
    peak, order = _chunk_stages(par, n_micro, pp_rank)
    counts = [0] * len(stages_of_rank(pp_rank, par))
    for local in order[:peak]:
        counts[local] += 1
    return counts


def schedule_order(par: ParallelConfig, n_micro: int, pp_rank: int) -> List[Tuple[str, int]]:
    """The forward ("F") and backward ("B") steps, by local stage, that reproduce the rank's peak.

    The warm-up forwards up to the in-flight peak; then, per local stage (the last first, as gradients
    flow), one backward and — where micro-batches remain — one forward, so each local stage has
    accumulated gradients while the in-flight activations are back at their peak (the steady state);
    then the remaining backwards. Without PP: two micro-batches (one when the step has one), so an
    accumulated gradient meets a second micro-batch's activations. ``train/memory_measure.py`` runs it.
    """
    if par.pp == 1:
        return [("F", 0), ("B", 0)] * min(n_micro, 2)
    peak, order = _chunk_stages(par, n_micro, pp_rank)
    steps = [("F", local) for local in order[:peak]]
    remaining = order[peak:]
    live = in_flight_micro_batches(par, n_micro, pp_rank)
    for local in reversed(range(len(live))):
        if not live[local]:
            continue
        steps.append(("B", local))
        live[local] -= 1
        if local in remaining:
            remaining.remove(local)
            steps.append(("F", local))
            live[local] += 1
    for local in reversed(range(len(live))):
        steps += [("B", local)] * live[local]
    return steps


# --------------------------------------------------------------------------------- one object
@dataclass(frozen=True)
class Layout:
    """A training layout as the planner sees it, built from a config by the functions above (no
    arithmetic of its own): for the throughput model and the CLI to read rather than recompute."""

    cfg: TrainConfig
    schedule: Optional[Schedule]       # None without PP
    world_size: int
    num_stages: int
    stage_ranges: Tuple[range, ...]    # layer range of every stage
    micro_batches: int                 # per data-parallel rank and step
    tokens_per_micro_batch: int

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Layout":
        par = cfg.parallel
        return cls(cfg, schedule(par.pp_schedule) if par.pp > 1 else None, par.world_size, num_stages(par),
                   tuple(model_stage_ranges(cfg.model, par)), step_micro_batches(cfg),
                   cfg.data.micro_batch_size * cfg.data.seq_len)

    def stages_of(self, pp_rank: int) -> List[int]:
        return stages_of_rank(pp_rank, self.cfg.parallel)

    def rank_of(self, stage: int) -> int:
        par = self.cfg.parallel
        return stage_to_rank(stage, par.pp, par.pp_schedule) if par.pp > 1 else 0

    def params(self, pp_rank: int) -> StageParams:
        return stage_params(self.cfg.model, self.cfg.parallel, pp_rank)

    def in_flight(self, pp_rank: int) -> List[int]:
        return in_flight_micro_batches(self.cfg.parallel, self.micro_batches, pp_rank)
