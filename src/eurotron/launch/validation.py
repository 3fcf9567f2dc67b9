"""Checks of a launch, on top of the training config's own (``validate_train_config``), before anything
is written or submitted: the layout against the system's nodes, the partition's and QoS's limits, GPU
memory, the signal and chain settings, and every value that goes into the script."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from ..config import ConfigError, TrainConfig
from ..plan.memory import fit_problem
from ..validation import _Problems, check_choices, validate_train_config
from . import shell
from .nodes import PATTERNS, JobPlan, format_seconds, node_capacity, parse_slurm_time, plan_job

GPU_REQUESTS = ("gpus_per_node", "gres", "gpus_per_task", "none")
CONTAINER_RUNTIMES = ("none", "singularity", "edf")
SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "URG", "XCPU")
ARCHES = ("x86_64", "aarch64")
LAUNCH_CHOICES = (("cluster.launcher.pattern", PATTERNS), ("cluster.slurm.gpu_request", GPU_REQUESTS),
                  ("cluster.container.runtime", CONTAINER_RUNTIMES), ("cluster.arch", ARCHES),
                  ("launch.signal", SIGNALS))


def _check_layout(cfg: TrainConfig, plan: JobPlan, p: _Problems) -> None:
    c, par = cfg.cluster, cfg.parallel
    capacity = node_capacity(cfg)
    world = par.world_size
    if capacity > 0:
        if par.tp > capacity or capacity % par.tp:
            p.add("parallel.tp", par.tp,
                  f"a tensor-parallel group must sit inside one node, and {c.name} runs {capacity} ranks per node; "
                  f"use a tp that divides {capacity}")
        if world > capacity and world % capacity:
            p.add("parallel", f"world size {world}",
                  f"does not fill whole nodes of {capacity} ranks on {c.name} ({world / capacity:.2f} nodes); "
                  f"make pp*dp_replicate*dp_shard*tp a multiple of {capacity}")
    limits = _selected_limits(cfg)
    for key, name, lim in limits:
        if lim.max_nodes and plan.nodes > lim.max_nodes:
            p.add(key, name, f"admits at most {lim.max_nodes} node(s) but the layout needs {plan.nodes} "
                             f"({world} ranks, {plan.ranks_per_node} per node); shrink the layout or pick another {key.split('.')[-1]}")
        if lim.min_nodes and plan.nodes < lim.min_nodes:
            p.add(key, name, f"needs at least {lim.min_nodes} nodes but the layout uses {plan.nodes}")
        if lim.exclusive and capacity and plan.ranks_per_node < capacity:
            p.add(key, name, f"allocates whole nodes but the layout uses {plan.ranks_per_node} of {capacity} GPUs; "
                             f"use {capacity} ranks per node or a partition that shares nodes")
        if lim.max_time:
            try:
                wanted, allowed = parse_slurm_time(c.slurm.time), parse_slurm_time(lim.max_time)
            except ValueError:
                continue  # reported below
            if wanted > allowed:
                p.add("cluster.slurm.time", c.slurm.time,
                      f"exceeds {name}'s limit of {format_seconds(allowed)}; lower it (and use launch.chain=N "
                      f"for longer runs)")
    if c.cpus_per_node and plan.cpus_per_task * plan.tasks_per_node > c.cpus_per_node:
        p.add("cluster.slurm.cpus_per_task", plan.cpus_per_task,
              f"x {plan.tasks_per_node} tasks per node exceeds the {c.cpus_per_node} usable cores of a {c.name} node")


def _selected_limits(cfg: TrainConfig):
    s = cfg.cluster.slurm
    out = []
    if s.partition and s.partition in s.partitions:
        out.append(("cluster.slurm.partition", s.partition, s.partitions[s.partition]))
    if s.qos and s.qos in s.qos_limits:
        out.append(("cluster.slurm.qos", s.qos, s.qos_limits[s.qos]))
    return out


def _check_choices(cfg: TrainConfig, p: _Problems) -> None:
    c, launch = cfg.cluster, cfg.launch
    check_choices(cfg, p, LAUNCH_CHOICES)
    p.positive("launch.chain", launch.chain)
    p.positive("launch.signal_seconds", launch.signal_seconds, allow_zero=True)
    p.positive("cluster.gpus_per_node", c.gpus_per_node, allow_zero=True)
    p.positive("cluster.launcher.ranks_per_node", c.launcher.ranks_per_node, allow_zero=True)
    p.positive("cluster.slurm.cpus_per_task", c.slurm.cpus_per_task, allow_zero=True)
    p.positive("cluster.gpu_memory_gb", c.gpu_memory_gb, allow_zero=True)
    if not 1024 <= c.launcher.port_base <= 55535:
        p.add("cluster.launcher.port_base", c.launcher.port_base, "must be in [1024, 55535] (the port is base + job id % 10000)")
    if not c.launcher.train_command:
        p.add("cluster.launcher.train_command", [], "needs the training command, e.g. [eurotron-train]")
    if c.slurm.account_required and not c.slurm.account:
        p.add("cluster.slurm.account", c.slurm.account,
              f"{c.name} charges jobs to a project: pass cluster.slurm.account=<your project account>")
    if c.container.runtime == "singularity" and not c.container.image:
        p.add("cluster.container.image", c.container.image,
              f"{c.name} runs in a container: set the .sif image path (or cluster.container.runtime=none)")
    if c.container.runtime == "edf" and not (c.container.image or c.container.edf):
        p.add("cluster.container.image", c.container.image,
              f"{c.name} runs in a Container Engine environment: set the image (.sqsh or registry reference), "
              f"or cluster.container.edf to an existing EDF")
    if launch.chain > 1 or requeue_enabled(cfg):
        if cfg.checkpoint.resume != "auto":
            p.add("checkpoint.resume", cfg.checkpoint.resume,
                  "must be auto for chained or requeued jobs (each one continues from latest)")
        if not cfg.checkpoint.save_final and not cfg.checkpoint.every:
            p.add("checkpoint.every", 0, "chained or requeued jobs need checkpoints; set checkpoint.every > 0")
    try:
        limit = parse_slurm_time(c.slurm.time)
    except ValueError:
        p.add("cluster.slurm.time", c.slurm.time, "is not a Slurm time (M, H:M:S, D-H:M:S …)")
    else:
        if launch.signal_seconds and launch.signal_seconds >= limit:
            p.add("launch.signal_seconds", launch.signal_seconds,
                  f"must be shorter than the job's time limit ({c.slurm.time}), or the signal comes at once")
    for key, lim in [*(("cluster.slurm.partitions." + k, v) for k, v in c.slurm.partitions.items()),
                     *(("cluster.slurm.qos_limits." + k, v) for k, v in c.slurm.qos_limits.items())]:
        if lim.max_time:
            try:
                parse_slurm_time(lim.max_time)
            except ValueError:
                p.add(key + ".max_time", lim.max_time, "is not a Slurm time")


def _check_script_values(cfg: TrainConfig, p: _Problems) -> None:
    """Everything that goes onto an #SBATCH line, and the env names, must be safe there."""
    s = cfg.cluster.slurm
    values = {
        "cluster.slurm.account": s.account, "cluster.slurm.partition": s.partition, "cluster.slurm.qos": s.qos,
        "cluster.slurm.time": s.time, "cluster.slurm.constraint": s.constraint,
        "cluster.slurm.reservation": s.reservation, "cluster.slurm.hint": s.hint, "cluster.slurm.mem": s.mem,
        "run_dir": cfg.run_dir,
    }
    for key, value in values.items():
        if value is None:
            continue
        try:
            shell.sbatch_value(value, key)
        except shell.UnsafeValue as err:
            p.lines.append(str(err))
    for i, option in enumerate(s.extra):
        try:
            shell.sbatch_option(option, f"cluster.slurm.extra[{i}]")
        except shell.UnsafeValue as err:
            p.lines.append(str(err))
    for name in cfg.cluster.env:
        try:
            shell.env_name(name)
        except shell.UnsafeValue as err:
            p.lines.append(str(err))


def requeue_enabled(cfg: TrainConfig) -> bool:
    """launch.requeue, where null means: requeue a single job, let a chain's next job continue."""
    if cfg.launch.requeue is not None:
        return bool(cfg.launch.requeue)
    return cfg.launch.chain <= 1


def check_launch(cfg: TrainConfig, *, check_data: bool = True) -> JobPlan:
    """Validate the training config and the launch; raise ConfigError with every problem, else the plan."""
    p = _Problems()
    try:
        validate_train_config(cfg)
        train_ok = True
    except ConfigError as err:  # report the training config's problems together with the launch's
        p.lines.extend(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        train_ok = False
    _check_choices(cfg, p)
    _check_script_values(cfg, p)
    plan: Optional[JobPlan] = None
    if train_ok:  # the layout is well-formed: place it on nodes and into GPU memory
        plan = plan_job(cfg)
        _check_layout(cfg, plan, p)
        problem = fit_problem(cfg)
        if problem:
            p.add("parallel", f"pp={cfg.parallel.pp} dp_shard={cfg.parallel.dp_shard} tp={cfg.parallel.tp} "
                              f"on {cfg.model.name}", problem)
    if check_data:
        _check_data_paths(cfg, p)
    p.raise_if_any()
    assert plan is not None
    return plan


def _check_data_paths(cfg: TrainConfig, p: _Problems) -> None:
    """The job reads the data on the compute nodes; a missing dataset is best found before the queue."""
    paths: List[str] = [cfg.data.path, *(b.path for b in cfg.data.blend)]
    for path in paths:
        if path and path != "???" and not (Path(path) / "manifest.json").exists():
            p.add("data.path", path,
                  f"has no manifest.json (seen from {os.getcwd()}); prepare it with eurotron-prepare or fix the path")
