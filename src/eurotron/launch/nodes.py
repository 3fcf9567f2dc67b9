"""From a parallel layout and a system's node shape to a Slurm job shape: nodes, tasks, CPUs, GPUs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import TrainConfig

PATTERNS = ("torchrun", "srun")


@dataclass(frozen=True)
class JobPlan:
    world_size: int
    nodes: int
    # Ranks (processes) on each node.
    ranks_per_node: int
    # torchrun: one Slurm task per node running torchrun; srun: one Slurm task per rank.
    pattern: str
    tasks_per_node: int
    # --cpus-per-task; 0: not set (Slurm's default).
    cpus_per_task: int
    # GPUs asked for per node; 0 on CPU clusters.
    gpus_per_node: int
    # OMP_NUM_THREADS of one rank.
    omp_threads: int

    @property
    def total_tasks(self) -> int:  # the sbatch templates' --ntasks (launchers/common/*.j2)
        return self.nodes * self.tasks_per_node


def node_capacity(cfg: TrainConfig) -> int:
    """Ranks one node takes: launcher.ranks_per_node, else the GPUs per node; 0 = unbounded (CPU)."""
    c = cfg.cluster
    return c.launcher.ranks_per_node or c.gpus_per_node


def plan_job(cfg: TrainConfig) -> JobPlan:
    """The job shape; `launch.validation.check_launch` reports layouts that do not fit it."""
    c = cfg.cluster
    world = max(cfg.parallel.world_size, 1)
    capacity = node_capacity(cfg)
    if capacity <= 0 or world <= capacity:
        nodes, per_node = 1, world
    else:
        nodes, per_node = -(-world // capacity), capacity
    pattern = c.launcher.pattern
    tasks = per_node if pattern == "srun" else 1
    cpus = c.slurm.cpus_per_task
    if cpus <= 0 and c.cpus_per_node > 0:
        # A partial node gets its share of the cores: the share of the GPUs it uses.
        share = c.cpus_per_node * per_node // capacity if 0 < per_node < capacity else c.cpus_per_node
        cpus = max(share // tasks, 1)
    ranks_per_task = per_node // tasks
    omp = max(cpus // ranks_per_task, 1) if cpus else 1
    gpus = min(per_node, c.gpus_per_node) if c.gpus_per_node > 0 else 0
    return JobPlan(world_size=world, nodes=nodes, ranks_per_node=per_node, pattern=pattern, tasks_per_node=tasks,
                   cpus_per_task=cpus, gpus_per_node=gpus, omp_threads=omp)


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_slurm_time(text: str) -> int:
    """Seconds of a Slurm time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S. Raises ValueError otherwise."""
    text = str(text).strip()
    if text.upper() in ("INFINITE", "UNLIMITED"):
        return 10**9
    match = _TIME.match(text)
    if not match:
        raise ValueError(f"not a Slurm time: {text!r}")
    days, a, b, c = match.groups()
    a, b, c = int(a), None if b is None else int(b), None if c is None else int(c)
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if b is None:
        return a * 60                       # minutes
    if c is None:
        return a * 60 + b                   # minutes:seconds
    return (a * 60 + b) * 60 + c            # hours:minutes:seconds


def format_seconds(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}-" if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
