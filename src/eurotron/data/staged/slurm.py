"""eurotron-prepare launch=true: validate, write one sbatch script per stage into the work directory
and submit the stages chained with afterok dependencies, each array holding only its unfinished
tasks (a rerun of the same command redoes only those; stages with none are not submitted).

Resources come from the cluster config (account, QoS, reservation, modules, venv or Singularity
container, env) and `staged` (partition, cores, memory and time per task, max_parallel); the job
asks for CPU cores only, so on a GPU system name its CPU partition in staged.partition.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import jinja2

from ...config import ConfigError, PrepareConfig
from ...launch import shell
from ...launch.nodes import format_seconds, parse_slurm_time
from ...launch.render import _environment, job_env, resolve_venv
from ...launch.submit import SubmitError, _parse_job_id
from .runner import STAGES, init_work_dir, staged_problems, task_count
from .workdir import WorkDir

TEMPLATE = "common/prepare_stage.sbatch.j2"
ARRAY_STAGES = ("filter", "dedup", "tokenize")
JOBS_DIR, LOG_DIR = "jobs", "logs"
_MEM = re.compile(r"\d+[KMGT]?")


def _mem_mb(text: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def check_staged_launch(cfg: PrepareConfig) -> None:
    """Every problem of a staged launch on cfg.cluster at once (ConfigError), before anything is written."""
    s, c = cfg.staged, cfg.cluster
    slurm = c.slurm
    lines = list(staged_problems(cfg))
    if slurm.max_array_size < 1:
        lines.append(f"cluster.slurm.max_array_size={slurm.max_array_size}: must be >= 1 (the system's MaxArraySize)")
    for key, n in (("staged.tasks", s.tasks), ("staged.dedup_tasks", s.dedup_tasks)):
        if slurm.max_array_size >= 1 and n > slurm.max_array_size:
            lines.append(f"{key}={n}: more than {c.name}'s array size limit (cluster.slurm.max_array_size="
                         f"{slurm.max_array_size}); use fewer, larger tasks")
    if s.max_parallel < 0:
        lines.append(f"staged.max_parallel={s.max_parallel}: must be >= 0 (0: no limit)")
    if s.cpus_per_task < 1:
        lines.append(f"staged.cpus_per_task={s.cpus_per_task}: must be >= 1")
    elif c.cpus_per_node and s.cpus_per_task > c.cpus_per_node:
        lines.append(f"staged.cpus_per_task={s.cpus_per_task}: a {c.name} node has {c.cpus_per_node} usable cores")
    if not _MEM.fullmatch(str(s.mem_per_task)) or _mem_mb(str(s.mem_per_task)) <= 0:
        lines.append(f"staged.mem_per_task={s.mem_per_task!r}: must be a positive Slurm memory size such as 4G or 16000M")
    if slurm.account_required and not slurm.account:
        lines.append(f"cluster.slurm.account={slurm.account!r}: {c.name} charges jobs to a project: pass "
                     f"cluster.slurm.account=<your project account>")
    if c.container.runtime not in ("none", "singularity"):
        lines.append(f"cluster.container.runtime={c.container.runtime!r}: the staged prepare runs with none or "
                     f"singularity; use cluster.container.runtime=none with a venv (cluster.launcher.venv=...)")
    elif c.container.runtime == "singularity" and not c.container.image:
        lines.append(f"cluster.container.image=None: {c.name} runs in a container: set the .sif image path "
                     f"(or cluster.container.runtime=none)")
    partition = s.partition or slurm.partition
    try:
        wanted = parse_slurm_time(s.time)
    except ValueError:
        lines.append(f"staged.time={s.time!r}: is not a Slurm time (M, H:M:S, D-H:M:S ...)")
        wanted = None
    limits = slurm.partitions.get(partition) if partition else None
    if limits is not None and limits.max_time and wanted is not None:
        allowed = parse_slurm_time(limits.max_time)
        if wanted > allowed:
            lines.append(f"staged.time={s.time}: exceeds partition {partition}'s limit of {format_seconds(allowed)}; "
                         f"lower it, or use more staged.tasks so each does less")
    for key, value in (("staged.partition", partition), ("staged.time", s.time), ("staged.mem_per_task", s.mem_per_task),
                       ("cluster.slurm.account", slurm.account), ("cluster.slurm.qos", slurm.qos)):
        if value is not None:
            try:
                shell.sbatch_value(value, key)
            except shell.UnsafeValue as err:
                lines.append(str(err))
    if lines:
        raise ConfigError("invalid staged prepare launch:\n  " + "\n  ".join(dict.fromkeys(lines)))


def render_stage(cfg: PrepareConfig, work: WorkDir, stage: str, submit_dir: Path) -> str:
    single = stage not in ARRAY_STAGES
    argv = ["python", "-m", "eurotron.data.staged", stage, str(work.root), "--workers",
            str(cfg.staged.cpus_per_task if cfg.staged.cpus_per_task > 1 else 0)]
    if single:
        argv += ["--task", "0"]
    job = {
        "name": shell.job_name(f"prep-{stage}"),
        "stage": stage,
        "work_dir": str(work.root),
        "cpus": cfg.staged.cpus_per_task,
        "mem": cfg.staged.mem_per_task,
        "time": cfg.staged.time,
        "partition": cfg.staged.partition or cfg.cluster.slurm.partition,
        "log_file": str(work.root / LOG_DIR / (f"{stage}-%A_%a.out" if not single else f"{stage}-%j.out")),
        "submit_dir": str(submit_dir),
        "venv": resolve_venv(cfg),
        "env": job_env(cfg, SimpleNamespace(omp_threads=1)),
        "argv": argv,
    }
    try:
        return _environment().get_template(TEMPLATE).render(cluster=cfg.cluster, job=job)
    except jinja2.TemplateError as err:
        raise ConfigError(f"launchers/{TEMPLATE}: {err}") from err


def array_spec(tasks: List[int], max_parallel: int) -> str:
    """0-3,7,9-10 (%max_parallel)."""
    runs: List[Tuple[int, int]] = []
    for t in tasks:
        if runs and runs[-1][1] == t - 1:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    spec = ",".join(str(a) if a == z else f"{a}-{z}" for a, z in runs)
    return spec + (f"%{max_parallel}" if max_parallel else "")


def launch_staged(cfg: PrepareConfig, sbatch: str = "sbatch", submit_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Validate, prepare the work directory, submit the unfinished stages; what was submitted."""
    check_staged_launch(cfg)
    work = init_work_dir(cfg)
    plan = work.plan()
    submit_dir = Path(submit_dir or os.getcwd())
    (work.root / JOBS_DIR).mkdir(exist_ok=True)
    (work.root / LOG_DIR).mkdir(exist_ok=True)
    previous: Optional[str] = None
    jobs: List[Dict[str, Any]] = []
    for stage in STAGES:
        pending = work.pending(stage, task_count(stage, plan))
        if not pending:
            continue
        script = work.root / JOBS_DIR / f"{stage}.sbatch"
        script.write_text(render_stage(cfg, work, stage, submit_dir))
        cmd = [sbatch, "--parsable", "--kill-on-invalid-dep=yes"]
        if stage in ARRAY_STAGES:
            cmd.append(f"--array={array_spec(pending, cfg.staged.max_parallel)}")
        if previous:
            cmd.append(f"--dependency=afterok:{previous}")
        cmd.append(str(script))
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=submit_dir)
        if done.returncode != 0:
            already = f" (already submitted: {', '.join(j['job_id'] for j in jobs)})" if jobs else ""
            raise SubmitError(f"{' '.join(cmd)} failed{already}: {done.stderr.strip() or done.stdout.strip()}")
        previous = _parse_job_id(done.stdout)
        jobs.append({"stage": stage, "job_id": previous, "tasks": pending, "command": cmd})
    return {"work_dir": str(work.root), "jobs": jobs}
