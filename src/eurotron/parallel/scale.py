"""Scale check without GPUs: the real plans, on the meta device, over a fake process group.

For every pipeline rank of a layout (say TP8 x PP8 x DP16 = 1024 ranks) this builds that rank's
stage(s) of the model on the meta device and applies the very TP / FSDP plans a run would apply,
over torch's fake process-group backend (collectives are no-ops, meshes and DTensor placements are
real). From each parameter's placements it then computes the shard every rank of the stage holds and
checks that the shards tile every parameter exactly once; summed over the stages they give the
model's parameter count. Per rank it reports the parameter count and the bytes of training state.

Bytes per rank: fp32 master weights, fp32 gradients and AdamW's two fp32 moments (16 B per local
parameter), plus, with FSDP, the gathered compute copies of two blocks at a time (the one running and
the one being prefetched) in the compute dtype, plus an activation estimate (``activation_bytes``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

from ..config import DataConfig, ModelConfig, ParallelConfig, TrainConfig
from ..model import build_model, count_parameters
from .grads import is_sharded
from ..plan.layout import STATE_BYTES_PER_PARAM
from .mesh import ParallelMesh, build_mesh
from .parallelize import parallelize

DP_TP_DIMS = ("dp_replicate", "dp_shard", "tp")


@dataclass
class StageReport:
    pp_rank: int
    stages: List[int]
    unique_params: int                 # parameters of these stages, each counted once
    per_rank_params: List[int]         # local parameter elements of every rank of this pp rank
    largest_block_gathered: int        # elements of the largest block after TP, before FSDP sharding

    def state_bytes(self) -> int:
        return max(self.per_rank_params) * STATE_BYTES_PER_PARAM


def activation_bytes(model_cfg: ModelConfig, par: ParallelConfig, seq_len: int, micro_batch: int,
                     layers_on_rank: int, bytes_per_value: int = 2) -> int:
    """Activation memory of the busiest pipeline rank, after Korthikanti et al. (2022), in bf16.

    One block's backward working set is ~34 * s * b * h bytes / t with sequence parallelism (attention
    scores are not kept: SDPA's fused kernels recompute them). With full recomputation a block keeps
    only its input (2 * s * b * h / t bytes) per micro-batch in flight; selective keeps every other
    block whole; none keeps all. 1F1B keeps up to ``pp`` micro-batches in flight on the first rank
    (interleaving raises that by up to one round per virtual stage). The fp32 logits of one
    micro-batch (s * b * vocab / t * 4 bytes, twice for the softmax backward) come on top.
    """
    sbh = seq_len * micro_batch * model_cfg.hidden_size
    tp = par.tp
    per_block_full = 34 * sbh // tp * bytes_per_value // 2
    per_block_input = sbh // tp * bytes_per_value
    if par.activation_checkpoint == "full":
        kept = layers_on_rank * per_block_input
    elif par.activation_checkpoint == "selective":
        every = max(par.activation_checkpoint_every, 1)
        recomputed = (layers_on_rank + every - 1) // every
        kept = recomputed * per_block_input + (layers_on_rank - recomputed) * per_block_full
    else:
        kept = layers_on_rank * per_block_full
    in_flight = par.pp if par.pp_virtual_stages == 1 else par.pp + (par.pp_virtual_stages - 1) * par.pp
    logits = 2 * seq_len * micro_batch * model_cfg.vocab_size // tp * 4
    return kept * in_flight + per_block_full + logits


@dataclass
class ScaleReport:
    model: str
    layout: str
    world_size: int
    total_params: int
    stages: List[StageReport] = field(default_factory=list)
    compute_bytes_per_param: int = 2   # bf16 compute copies on GPU
    activations: int = 0               # estimate for the busiest rank (see activation_bytes)

    @property
    def sharded_total(self) -> int:
        return sum(s.unique_params for s in self.stages)

    @property
    def max_params_per_rank(self) -> int:
        return max(max(s.per_rank_params) for s in self.stages)

    def max_bytes_per_rank(self) -> int:
        """Weights, gradients, optimizer state and gathered blocks of the fullest rank, plus activations."""
        return self.activations + max(s.state_bytes() + 2 * s.largest_block_gathered * self.compute_bytes_per_param
                                      for s in self.stages)

    def format(self) -> str:
        lines = [f"{self.model} on {self.layout} ({self.world_size} ranks): {self.total_params:,} parameters; "
                 f"shards add up to {self.sharded_total:,}"]
        for s in self.stages:
            working = 2 * s.largest_block_gathered * self.compute_bytes_per_param
            lines.append(
                f"  pp rank {s.pp_rank} (stages {','.join(map(str, s.stages))}): "
                f"{min(s.per_rank_params):,}-{max(s.per_rank_params):,} params/rank, "
                f"{s.state_bytes() / 2**30:.2f} GiB weights+grads+AdamW + {working / 2**30:.2f} GiB gathered blocks")
        lines.append(f"  activations (estimate, busiest rank): {self.activations / 2**30:.2f} GiB")
        lines.append(f"  max per rank: {self.max_bytes_per_rank() / 2**30:.2f} GiB")
        return "\n".join(lines)


def _local_numels(dt: DTensor, grid: Tuple[int, int, int]) -> Dict[Tuple[int, int, int], Tuple[int, bool]]:
    key = (tuple(dt.shape), dt.device_mesh.mesh_dim_names, tuple(dt.device_mesh.shape), tuple(dt.placements), grid)
    if key not in _NUMEL_CACHE:
        _NUMEL_CACHE[key] = _compute_local_numels(dt, grid)
    return _NUMEL_CACHE[key]


_NUMEL_CACHE: Dict[tuple, Dict[Tuple[int, int, int], Tuple[int, bool]]] = {}


def _compute_local_numels(dt: DTensor, grid: Tuple[int, int, int]) -> Dict[Tuple[int, int, int], Tuple[int, bool]]:
    """(local elements, counts-once) of ``dt`` at every (dp_replicate, dp_shard, tp) coordinate.

    "counts once" is True at coordinate 0 of every mesh dim over which the tensor is replicated (dims
    of the grid outside the tensor's mesh replicate it too), so summing those entries covers each
    element exactly once.
    """
    names = dt.device_mesh.mesh_dim_names
    out = {}
    for coord in itertools.product(*(range(n) for n in grid)):
        by_name = dict(zip(DP_TP_DIMS, coord))
        sub = [by_name[n] for n in names]
        shape, _ = _compute_local_shape_and_global_offset(dt.shape, dt.device_mesh.shape, sub, dt.placements,
                                                          skip_offset=True)
        numel = 1
        for size in shape:
            numel *= size
        sharded_dims = {n for n, pl in zip(names, dt.placements) if is_sharded(pl)}
        once = all(by_name[n] == 0 for n in DP_TP_DIMS if n not in sharded_dims)
        out[coord] = (numel, once)
    return out


def _block_gathered_numel(part: torch.nn.Module) -> int:
    """Elements one rank gathers to run its largest block (TP shard size, FSDP dims gathered)."""
    largest = 0
    for block in part.layers.values():
        total = 0
        for p in block.parameters():
            if isinstance(p, DTensor):
                tp_shards = [p.device_mesh.size(i) for i, (n, pl) in
                             enumerate(zip(p.device_mesh.mesh_dim_names, p.placements)) if n == "tp" and is_sharded(pl)]
                total += p.numel() // (tp_shards[0] if tp_shards else 1)
            else:
                total += p.numel()
        largest = max(largest, total)
    return largest


def check_stage(model_cfg: ModelConfig, par: ParallelConfig, pp_rank: int) -> StageReport:
    """Build pipeline rank ``pp_rank``'s parts over the current (fake) process group and measure them."""
    cfg = TrainConfig(model=model_cfg, parallel=par, data=DataConfig(path="-"))
    pmesh: ParallelMesh = build_mesh(par, torch.device("cpu"))
    model = parallelize(cfg, pmesh, torch.device("cpu"), seed=0, materialize=False)
    grid = (par.dp_replicate, par.dp_shard, par.tp)
    per_rank: Dict[Tuple[int, int, int], int] = {c: 0 for c in itertools.product(*(range(n) for n in grid))}
    unique = 0
    seen = set()
    for part in model.modules:
        tied_copy = part.output.weight if (model_cfg.tie_embeddings and par.pp > 1 and part.output is not None) else None
        for name, p in part.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            dt = p if isinstance(p, DTensor) else None
            if dt is None:  # not parallelised at all: every rank holds it whole
                numels = {c: (p.numel(), all(x == 0 for x in c)) for c in per_rank}
            else:
                numels = _local_numels(dt, grid)
            covered = 0
            for coord, (numel, once) in numels.items():
                per_rank[coord] += numel
                covered += numel if once else 0
            if covered != p.numel():
                raise AssertionError(f"{name}: shards cover {covered} of {p.numel()} elements")
            if p is not tied_copy:
                unique += covered
    counts = [per_rank[c] for c in sorted(per_rank)]
    return StageReport(pp_rank, list(model.stage_ids), unique, counts,
                       max(_block_gathered_numel(part) for part in model.modules))


def scale_check(model_cfg: ModelConfig, par: ParallelConfig, seq_len: int = 4096, micro_batch: int = 1) -> ScaleReport:
    """Run ``check_stage`` for every pipeline rank, each over a fresh fake process group."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("scale_check needs to own the (fake) default process group; none may be running")
    total = count_parameters(build_model(model_cfg, device="meta"))
    layout = f"TP{par.tp} x PP{par.pp} x DP{par.dp}" + (f" ({par.dp_replicate}x{par.dp_shard} HSDP)"
                                                        if par.dp_replicate > 1 else "")
    report = ScaleReport(model_cfg.name, layout, par.world_size, total)
    layers_on_rank = -(-model_cfg.num_layers // par.pp)
    report.activations = activation_bytes(model_cfg, par, seq_len, micro_batch, layers_on_rank)
    ranks_per_stage = par.world_size // par.pp
    for pp_rank in range(par.pp):
        dist.init_process_group("fake", store=FakeStore(), rank=pp_rank * ranks_per_stage, world_size=par.world_size)
        try:
            report.stages.append(check_stage(model_cfg, par, pp_rank))
        finally:
            dist.destroy_process_group()
    return report
