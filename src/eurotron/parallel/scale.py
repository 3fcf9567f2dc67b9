"""Scale check without GPUs: the real plans, on the meta device, over a fake process group.

For every pipeline rank of a layout (say TP8 x PP8 x DP16 = 1024 ranks) this builds that rank's
stage(s) of the model on the meta device and applies the very TP / FSDP plans a run would apply,
over torch's fake process-group backend (collectives are no-ops, meshes and DTensor placements are
real). From each parameter's placements it then computes the shard every rank of the stage holds and
checks that the shards tile every parameter exactly once; summed over the stages they give the
model's parameter count. The largest local count of each pipeline rank must equal the layout model's
(``plan.memory.RankPlan.params``), whose per-rank bytes the report then gives: bytes are the layout
model's alone (checked against torch's MemTracker in tests/test_memory_tracker.py), never restated here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

from ..config import TrainConfig
from ..model import build_model, count_parameters
from .grads import is_sharded
from ..plan.layout import GiB, layout_name
from ..plan.memory import MemoryEstimate, estimate_memory
from .mesh import ParallelMesh, build_mesh
from .parallelize import parallelize

DP_TP_DIMS = ("dp_replicate", "dp_shard", "tp")


@dataclass
class StageReport:
    pp_rank: int
    stages: List[int]
    unique_params: int                 # parameters of these stages, each counted once
    per_rank_params: List[int]         # local parameter elements of every rank of this pp rank


@dataclass
class ScaleReport:
    model: str
    layout: str
    world_size: int
    total_params: int
    estimate: MemoryEstimate           # the layout model's bytes per pipeline rank
    stages: List[StageReport] = field(default_factory=list)

    @property
    def sharded_total(self) -> int:
        return sum(s.unique_params for s in self.stages)

    @property
    def max_params_per_rank(self) -> int:
        return max(max(s.per_rank_params) for s in self.stages)

    def max_bytes_per_rank(self) -> int:
        return self.estimate.peak_bytes

    def format(self) -> str:
        lines = [f"{self.model} on {self.layout} ({self.world_size} ranks): {self.total_params:,} parameters; "
                 f"shards add up to {self.sharded_total:,}"]
        for s, plan in zip(self.stages, self.estimate.ranks):
            lines.append(f"  pp rank {s.pp_rank} (stages {','.join(map(str, s.stages))}): "
                         f"{min(s.per_rank_params):,}-{max(s.per_rank_params):,} params/rank; "
                         f"{plan.total_bytes / GiB:.1f} GiB at the peak (layout model)")
        lines.append(self.estimate.format())
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


def check_stage(cfg: TrainConfig, pp_rank: int) -> StageReport:
    """Build pipeline rank ``pp_rank``'s parts over the current (fake) process group and measure them."""
    model_cfg, par = cfg.model, cfg.parallel
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
    return StageReport(pp_rank, list(model.stage_ids), unique, counts)


def scale_check(cfg: TrainConfig) -> ScaleReport:
    """Run ``check_stage`` for every pipeline rank, each over a fresh fake process group, and check the
    largest local parameter count of each against the layout model's."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("scale_check needs to own the (fake) default process group; none may be running")
    model_cfg, par = cfg.model, cfg.parallel
    total = count_parameters(build_model(model_cfg, device="meta"))
    report = ScaleReport(model_cfg.name, layout_name(par), par.world_size, total, estimate_memory(cfg))
    ranks_per_stage = par.world_size // par.pp
    for pp_rank in range(par.pp):
        dist.init_process_group("fake", store=FakeStore(), rank=pp_rank * ranks_per_stage, world_size=par.world_size)
        try:
            stage = check_stage(cfg, pp_rank)
        finally:
            dist.destroy_process_group()
        planned = report.estimate.ranks[pp_rank].params
        # FSDP pads every parameter's rows to a multiple of dp_shard: well under 1% at these sizes.
        if abs(max(stage.per_rank_params) - planned) > 0.01 * planned:
            raise AssertionError(f"pp rank {pp_rank}: the plans put {max(stage.per_rank_params):,} parameters on a "
                                 f"rank, the layout model {planned:,}")
        report.stages.append(stage)
    return report
