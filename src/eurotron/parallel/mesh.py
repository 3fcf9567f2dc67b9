"""The device mesh ("pp", "dp_replicate", "dp_shard", "tp") and process-group start-up.

Rank order is Megatron's: TP varies fastest (a TP group is consecutive ranks, inside one node), then
the sharded and replicated data-parallel dims, and PP slowest (stages span nodes). The layout has
been validated before anything here runs (``validate_train_config`` with the launched world size), so
a bad layout never reaches ``init_process_group``.

Launchers: under ``torchrun`` the usual RANK/WORLD_SIZE/MASTER_ADDR are set; under ``srun`` with one
task per GPU, ranks come from SLURM_PROCID/SLURM_NTASKS (``env.process_env``) and the rendezvous
address defaults to the first host of the job's node list.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..config import ParallelConfig
from ..plan.layout import world_size_problem
from .env import ProcessEnv

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
# The flattened data-parallel dim (dp_replicate x dp_shard): batch slicing and loss reductions.
DP_FLAT = "dp"
DEFAULT_PORT = 29500


def resolve_backend(requested: str, device: torch.device) -> str:
    """auto: NCCL on GPUs (PyTorch's "nccl" is RCCL on ROCm builds), gloo on CPU."""
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def expand_nodelist(nodelist: str) -> List[str]:
    """Slurm's compressed host list, e.g. ``nid[001-003,007],login1`` -> nid001 nid002 nid003 nid007 login1."""
    hosts: List[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist):
        prefix, ranges = match.group(1), match.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(prefix + part)
    return hosts


def rendezvous_env() -> None:
    """Fill MASTER_ADDR / MASTER_PORT under srun when the batch script did not export them."""
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
        os.environ["MASTER_ADDR"] = expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1"
    if "MASTER_PORT" not in os.environ:
        # Every task of the job derives the same port; different jobs on one node rarely collide.
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        os.environ["MASTER_PORT"] = str(DEFAULT_PORT + job % 10000)


def init_distributed(env: ProcessEnv, device: torch.device, backend: str = "auto",
                     timeout_minutes: float = 30.0) -> bool:
    """Start the default process group for a multi-process run (idempotent); False for one process."""
    if dist.is_initialized():
        return True
    if env.world_size <= 1:
        return False
    rendezvous_env()
    chosen = resolve_backend(backend, device)
    dist.init_process_group(
        backend=chosen,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
        device_id=device if device.type == "cuda" else None,
    )
    return True


def shut_down_process_group() -> bool:
    """Barrier, then tear gloo/NCCL down explicitly; False when no process group was running."""
    if not dist.is_initialized():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def exit_without_finalisation(code: int = 0) -> None:
    """End a process that ran a process group, skipping interpreter finalisation.

    Gloo's worker threads can still hold work objects whose tensors reach into Python; destroyed
    during finalisation they abort the process ("terminate called without an active exception",
    SIGABRT) after a run that finished and wrote everything, about once in tens of 4-rank launches.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class ParallelMesh:
    """The run's DeviceMesh and the coordinates the trainer needs; ``mesh`` is None for one process."""

    cfg: ParallelConfig
    mesh: Optional[DeviceMesh]

    @property
    def enabled(self) -> bool:
        return self.mesh is not None

    # -------------------------------------------------------------------------------- sub-meshes
    def sub(self, *names: str) -> Optional[DeviceMesh]:
        return None if self.mesh is None else self.mesh[names if len(names) > 1 else names[0]]

    @property
    def tp_mesh(self) -> Optional[DeviceMesh]:
        return self.sub("tp") if self.cfg.tp > 1 else None

    @property
    def fsdp_mesh(self) -> Optional[DeviceMesh]:
        """1-D ("dp_shard") for FSDP, 2-D ("dp_replicate", "dp_shard") for HSDP; None without DP."""
        if self.cfg.dp <= 1:
            return None
        if self.cfg.dp_replicate > 1:
            return self.sub("dp_replicate", "dp_shard")
        return self.sub("dp_shard")

    # ----------------------------------------------------------------------------------- groups
    def group(self, name: str) -> Optional[dist.ProcessGroup]:
        return None if self.mesh is None else self.mesh.get_group(name)

    @property
    def dp_group(self) -> Optional[dist.ProcessGroup]:
        return self.group(DP_FLAT) if self.cfg.dp > 1 else None

    @property
    def pp_group(self) -> Optional[dist.ProcessGroup]:
        return self.group("pp") if self.cfg.pp > 1 else None

    # ------------------------------------------------------------------------------ coordinates
    def local_rank(self, name: str) -> int:
        return 0 if self.mesh is None else self.mesh.get_local_rank(name)

    @property
    def dp_rank(self) -> int:
        return self.local_rank(DP_FLAT)

    @property
    def dp_size(self) -> int:
        return self.cfg.dp

    @property
    def pp_rank(self) -> int:
        return self.local_rank("pp")

    def rank_at(self, pp: int, dp_replicate: int, dp_shard: int, tp: int) -> int:
        """Global rank at a mesh coordinate (Megatron order: tp fastest, pp slowest)."""
        c = self.cfg
        return ((pp * c.dp_replicate + dp_replicate) * c.dp_shard + dp_shard) * c.tp + tp

    def coordinate(self) -> tuple:
        if self.mesh is None:
            return (0, 0, 0, 0)
        return tuple(self.mesh.get_coordinate())


def build_mesh(par: ParallelConfig, device: torch.device) -> ParallelMesh:
    """The 4-D mesh over the default group (plus the flattened "dp" dim); None mesh for one process."""
    if par.world_size == 1 and not dist.is_initialized():
        return ParallelMesh(par, None)
    problem = world_size_problem(par, dist.get_world_size())
    if problem:
        raise RuntimeError(f"process group: {problem}")
    mesh = init_device_mesh(device.type, (par.pp, par.dp_replicate, par.dp_shard, par.tp), mesh_dim_names=MESH_DIMS)
    mesh["dp_replicate", "dp_shard"]._flatten(DP_FLAT)
    return ParallelMesh(par, mesh)


_PEER_FAILURE_HINTS = ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset",
                       "broken pipe", "socket")


def collective_failure_line(err: BaseException, step: int, timeout_minutes: float) -> Optional[str]:
    """One line naming a failed collective (a peer rank or node died or hangs), or None when `err` is not one.

    Gloo/NCCL errors are terse and arrive as a traceback per rank; this line says what happened, where,
    and what the job does next, so a log reader does not have to decode them."""
    if not dist.is_initialized():
        return None
    text = str(err)
    if not isinstance(err, dist.DistError) and not any(h in text.lower() for h in _PEER_FAILURE_HINTS):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return (f"eurotron: collective failure on rank {dist.get_rank()} ({socket.gethostname()}) after step {step}: "
            f"{first} -- a peer rank or node died or stopped answering (cluster.collective_timeout_minutes="
            f"{timeout_minutes:g}); ending this rank so the job fails and its requeue or the next job of the "
            f"chain resumes from the last complete checkpoint")
