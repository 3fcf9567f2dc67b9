"""Helpers of the launcher tests: compose + render, and a fake Slurm (stub commands) to run job scripts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from eurotron.compose import compose_train
from eurotron.launch.render import RenderedJob, render_job
from eurotron.launch.validation import check_launch

from small_run import SMALL_MODEL, prepare_dataset  # noqa: F401  (re-exported for the launch tests)

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("lumi", "leonardo", "marenostrum5", "jupiter", "alps", "meluxina", "karolina", "vega", "jeanzay",
           "deucalion", "discoverer", "arrhenius", "daedalus", "generic", "local")
# What a system's cluster config leaves for the user to set.
REQUIRED = {
    "lumi": ["cluster.slurm.account=project_465000001", "cluster.container.image=/appl/local/laifs/lumi-multitorch.sif"],
    "alps": ["cluster.slurm.account=a-abc123", "cluster.container.image=/capstor/store/cscs/ngc-pytorch.sqsh"],
    "vega": ["cluster.container.image=/ceph/hpc/data/pytorch.sif"],
    "daedalus": [],
    "generic": [],
    "local": [],
}
for _name in ("leonardo", "marenostrum5", "jupiter", "meluxina", "karolina", "jeanzay", "deucalion", "discoverer",
              "arrhenius"):
    REQUIRED[_name] = ["cluster.slurm.account=abc123"]



def compose(overrides: Sequence[str]):
    cfg, _ = compose_train(list(overrides))
    return cfg


def render(overrides: Sequence[str], run_dir: Path, submit_dir: Optional[Path] = None) -> RenderedJob:
    cfg = compose(overrides)
    plan = check_launch(cfg, check_data=False)
    return render_job(cfg, Path(run_dir), submit_dir or Path(run_dir).parent, plan)


GPUS_PER_NODE = {"lumi": 8, "karolina": 8, "discoverer": 8, "local": 1}


def system_overrides(system: str, *extra: str) -> List[str]:
    """The tiny model on one whole node of `system` (FSDP over its GPUs), plus `extra` overrides."""
    return [f"cluster={system}", "data.path=/data/tokens", "data.global_batch_size=64", "data.micro_batch_size=1",
            f"parallel.dp_shard={GPUS_PER_NODE.get(system, 4)}", *REQUIRED[system], *extra]


# ------------------------------------------------------------------------------------ fake Slurm
_STUBS = {
    # Records its arguments (NUL-separated) and runs the command after its options, as one task.
    "srun": r'''#!/bin/bash
printf '%s\0' "$@" > "$FAKE_SLURM_DIR/srun.args"
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 SLURM_NODEID=0 SLURM_STEP_NODELIST=localhost
exec "$@"
''',
    "scontrol": r'''#!/bin/bash
printf '%s\0' "$@" >> "$FAKE_SLURM_DIR/scontrol.args"
if [ "$1" = show ] && [ "$2" = hostnames ]; then echo localhost; fi
''',
    "singularity": r'''#!/bin/bash
printf '%s\0' "$@" > "$FAKE_SLURM_DIR/singularity.args"
shift  # exec
while [ $# -gt 0 ]; do case "$1" in --bind|-B) shift 2 ;; -*) shift ;; *) break ;; esac; done
shift  # the image
exec "$@"
''',
    "module": r'''#!/bin/bash
printf '%s\0' "$@" >> "$FAKE_SLURM_DIR/module.args"
''',
    "torchrun": r'''#!/bin/bash
printf '%s\0' "$@" > "$FAKE_SLURM_DIR/torchrun.args"
while [ $# -gt 0 ]; do case "$1" in --no-python) shift; break ;; -*) shift ;; *) break ;; esac; done
export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1
exec "$@"
''',
}

# The training command's stand-in: records argv and environment as JSON, then sleeps if asked.
RECORDER = r'''#!/usr/bin/env python3
import json, os, sys, time
with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "train.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
'''


def make_fake_slurm(root: Path, train_recorder: bool = True) -> Dict[str, str]:
    """Stub commands in root/bin; returns the environment to run a job script with them."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    stubs = dict(_STUBS)
    if train_recorder:
        stubs["eurotron-train"] = RECORDER
    for name, text in stubs.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM_DIR": str(root),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "USER": os.environ.get("USER", "tester"),
    }


def read_args(path: Path) -> List[str]:
    return [a for a in path.read_text().split("\0") if a] if path.exists() else []


def run_script(script: Path, env: Dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def recorded_train(root: Path) -> dict:
    return json.loads((root / "train.json").read_text())


FAKE_SBATCH = r'''#!/usr/bin/env python3
"""sbatch stand-in: records its arguments (one JSON list per call) and answers with the next job id."""
import json, os, sys
root = os.environ["FAKE_SLURM_DIR"]
count_file = os.path.join(root, "sbatch.count")
job = int(open(count_file).read()) + 1 if os.path.exists(count_file) else 101
open(count_file, "w").write(str(job))
with open(os.path.join(root, "sbatch.calls"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
print(job if "--parsable" in sys.argv else f"Submitted batch job {job}")
'''


def make_fake_sbatch(root: Path) -> Dict[str, str]:
    """A PATH whose `sbatch` only records the submission (for tests of eurotron-launch itself)."""
    env = make_fake_slurm(root)
    path = root / "bin" / "sbatch"
    path.write_text(FAKE_SBATCH)
    path.chmod(0o755)
    return env


def sbatch_calls(root: Path) -> List[List[str]]:
    calls = root / "sbatch.calls"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def launch_cli(args: Sequence[str], env: Dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    import sys

    exe = Path(sys.executable).parent / "eurotron-launch"
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
