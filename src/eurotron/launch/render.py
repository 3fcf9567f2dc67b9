"""Config → sbatch script (and, for the CSCS Container Engine, its EDF), from launchers/<system>.sbatch.j2.

Every value reaches the script through a quoting filter (``launch/shell.py``); anything printed
without one is shell-quoted by the environment's ``finalize`` hook, so a template cannot forget.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import jinja2

from ..config import ConfigError, TrainConfig
from ..paths import PACKAGE_DIR
from ..plan.gpus import gpu_vendor
from . import shell
from .nodes import JobPlan, plan_job
from .run_files import CONFIG_NAME, EDF_NAME, LOG_DIR
from .validation import SIGNALS, requeue_enabled



def launchers_dir() -> Path:
    """The `launchers/` tree: $EUROTRON_LAUNCHERS_DIR, else the checkout's `launchers/`."""
    override = os.environ.get("EUROTRON_LAUNCHERS_DIR")
    if override:
        return Path(override).resolve()
    checkout = PACKAGE_DIR.parent.parent / "launchers"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("eurotron cannot find its launchers/ tree; install from a checkout with "
                            "`pip install -e .` or set EUROTRON_LAUNCHERS_DIR=/path/to/eurotron/launchers")


def available_templates() -> List[str]:
    return sorted(p.name[: -len(".sbatch.j2")] for p in launchers_dir().glob("*.sbatch.j2"))


@dataclass
class RenderedJob:
    script: str
    plan: JobPlan
    run_dir: Path
    # Further files for the run directory (name -> text), e.g. the Container Engine EDF.
    files: Dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ filters
def _finalize(value: object) -> str:
    if isinstance(value, shell.Shell):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return shell.quote(value)


def _raw(value: object) -> str:
    if not isinstance(value, shell.Shell):
        raise TypeError(f"template bug: {value!r} printed raw without having been made safe")
    return value


def _comment(value: object) -> shell.Shell:
    """Text for a comment line: no line breaks or other control characters."""
    return shell.Shell(re.sub(r"[\x00-\x1f\x7f]", "?", str(value)))


def _toml(value: object) -> shell.Shell:
    """A TOML basic string (JSON's escapes are TOML's, except that TOML also forbids a raw DEL)."""
    return shell.Shell(json.dumps(str(value), ensure_ascii=True).replace("\x7f", "\\u007f"))


def _toml_key(key: object) -> shell.Shell:
    """A dotted TOML key (com.hooks.aws_ofi_nccl.enabled); parts that are not bare get quoted."""
    parts = str(key).split(".")
    return shell.Shell(".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else _toml(p) for p in parts))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(launchers_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters.update(
        q=shell.quote,
        argv=shell.quote_all,
        expand=shell.expand,
        envname=shell.env_name,
        sbatch=shell.sbatch_value,
        sbatch_option=shell.sbatch_option,
        raw=_raw,
        comment=_comment,
        toml=_toml,
        toml_key=_toml_key,
    )
    return env


# ------------------------------------------------------------------------------------------ context
def resolve_venv(cfg: TrainConfig) -> Optional[str]:
    """launcher.venv: "auto" is the venv this process runs from (none inside a container)."""
    venv = cfg.cluster.launcher.venv
    if venv != "auto":
        return venv or None
    if cfg.cluster.container.runtime != "none" or sys.prefix == sys.base_prefix:
        return None
    return sys.prefix


# Expandable segments let the caching allocator grow blocks instead of fragmenting (varying
# sequence/activation sizes, FSDP gathers); ROCm's PyTorch reads its own name for the same setting.
EXPANDABLE_SEGMENTS = "expandable_segments:True"
ALLOCATOR_ENV = {"nvidia": "PYTORCH_CUDA_ALLOC_CONF", "amd": "PYTORCH_HIP_ALLOC_CONF"}


def allocator_env(cfg: TrainConfig) -> Optional[str]:
    """The allocator variable for the cluster's GPU vendor (cluster.gpu_model; CUDA unless known AMD);
    None on CPU clusters."""
    if cfg.cluster.device == "cpu":
        return None
    return ALLOCATOR_ENV[gpu_vendor(cfg.cluster.gpu_model) or "nvidia"]


def job_env(cfg: TrainConfig, plan: JobPlan) -> List[Tuple[str, str]]:
    """Variables every task exports, in order: eurotron's defaults, then cluster.env (which wins)."""
    c = cfg.cluster
    local = c.storage.node_local.rstrip("/") or "/tmp"
    env: Dict[str, str] = {
        "OMP_NUM_THREADS": str(plan.omp_threads),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": c.launcher.nccl_debug,
        # Kernel caches on node-local storage, per user: parallel file systems choke on them.
        "TRITON_CACHE_DIR": f"{local}/eurotron-$USER/triton",
        "TORCHINDUCTOR_CACHE_DIR": f"{local}/eurotron-$USER/inductor",
    }
    allocator = allocator_env(cfg)
    if allocator:
        env[allocator] = EXPANDABLE_SEGMENTS
    if c.storage.hf_home:
        env["HF_HOME"] = c.storage.hf_home
    if c.launcher.offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name, value in c.env.items():
        env[str(name)] = "" if value is None else str(value)
    return list(env.items())


def _signal_spec(cfg: TrainConfig) -> Tuple[shell.Shell, str]:
    launch = cfg.launch
    name = str(launch.signal).upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise ConfigError(f"launch.signal={launch.signal!r}: must be one of {', '.join(SIGNALS)}")
    spec = f"{'B:' if launch.signal_batch else ''}{name}@{int(launch.signal_seconds)}"
    return shell.Shell(name), spec


def render_job(cfg: TrainConfig, run_dir: Path, submit_dir: Optional[Path] = None, plan: Optional[JobPlan] = None) -> RenderedJob:
    """Render the job script for `cfg` whose run directory is `run_dir` (absolute)."""
    run_dir = Path(run_dir)
    submit_dir = Path(submit_dir or os.getcwd())
    plan = plan or plan_job(cfg)
    c = cfg.cluster
    template_name = c.launcher.template or c.name
    names = available_templates()
    if template_name not in names:
        raise ConfigError(f"cluster.launcher.template={template_name!r}: no launchers/{template_name}.sbatch.j2; "
                          f"available: {', '.join(names)}")
    signal_name, signal_spec = _signal_spec(cfg)
    par = cfg.parallel
    config_file = run_dir / CONFIG_NAME
    edf = c.container.edf or str(run_dir / EDF_NAME)
    mounts = list(dict.fromkeys([*c.container.binds, str(submit_dir)]))
    job = {
        "name": shell.job_name(cfg.name),
        "run_dir": str(run_dir),
        "config_file": str(config_file),
        "log_file": str(run_dir / LOG_DIR / "%x-%j.out"),
        "submit_dir": str(submit_dir),
        "layout": f"tp={par.tp} pp={par.pp} dp_replicate={par.dp_replicate} dp_shard={par.dp_shard}",
        "signal": signal_name,
        "signal_spec": signal_spec,
        "requeue": requeue_enabled(cfg),
        # srun forwards a signal to its tasks; torchrun (a task itself) would die of USR2, so its
        # ranks learn of the signal from the flag file only.
        "forward_signal": plan.pattern == "srun",
        "venv": resolve_venv(cfg),
        "env": job_env(cfg, plan),
        "train_argv": [*c.launcher.train_command, "--config-file", str(config_file)],
        "edf": edf,
        "mounts": mounts,
        "workdir": c.container.workdir or str(submit_dir),
    }
    context = {"cluster": c, "launch": cfg.launch, "plan": plan, "job": job}
    env = _environment()
    try:
        script = env.get_template(f"{template_name}.sbatch.j2").render(**context)
        files = {}
        if c.container.runtime == "edf" and not c.container.edf:
            files[EDF_NAME] = env.get_template("common/environment.toml.j2").render(**context)
    except jinja2.TemplateError as err:
        raise ConfigError(f"launchers/{template_name}.sbatch.j2: {err}") from err
    return RenderedJob(script=script, plan=plan, run_dir=run_dir, files=files)
