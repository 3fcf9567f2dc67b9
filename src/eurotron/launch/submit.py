"""Write a run directory (resolved config, job script, EDF, logs/) and submit it with sbatch, chained."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import UserError
from ..paths import ensure_writable_dir
from .render import RenderedJob
from .run_files import CONFIG_NAME, LAUNCH_RECORD, LOG_DIR, SCRIPT_NAME


class SubmitError(UserError):
    """sbatch refused the job (its message says why: account, partition, limits …)."""


@dataclass
class Submission:
    run_dir: Path
    script: Path
    job_ids: List[str] = field(default_factory=list)
    commands: List[List[str]] = field(default_factory=list)


def sbatch_commands(script: Path, chain: int, first_dependency: Optional[str] = None) -> List[List[str]]:
    """The sbatch command lines of a chain; `{prev}` stands for the previous job's id."""
    commands = []
    for i in range(chain):
        cmd = ["sbatch", "--parsable"]
        dependency = first_dependency if i == 0 else "{prev}"
        if dependency:
            cmd.append(f"--dependency=afterany:{dependency}")
        commands.append([*cmd, str(script)])
    return commands


def check_run_dir(run_dir: Path, config_yaml: str, force: bool) -> None:
    """A run directory holds one run: the same config again resumes it, a different one is refused."""
    ensure_writable_dir(run_dir, "run_dir")  # a file or a read-only place: one error, before anything is written
    existing = run_dir / CONFIG_NAME
    if existing.exists() and existing.read_text() != config_yaml and not force:
        raise UserError(
            f"run_dir={run_dir} already holds a run with a different config ({existing}); choose another "
            f"name=/run_dir=, or pass launch.force=true to continue that run with the new config")


def write_run_dir(job: RenderedJob, config_yaml: str) -> Path:
    """config.yaml, job.sbatch (+ EDF) and logs/; returns the script's path."""
    run_dir = job.run_dir
    (run_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_NAME).write_text(config_yaml)
    for name, text in job.files.items():
        (run_dir / name).write_text(text)
    script = run_dir / SCRIPT_NAME
    script.write_text(job.script)
    script.chmod(0o755)
    return script


def _parse_job_id(stdout: str) -> str:
    # --parsable prints "<id>" or "<id>;<cluster>".
    job_id = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not job_id.isdigit():
        raise SubmitError(f"sbatch printed no job id: {stdout!r}")
    return job_id


def submit_chain(script: Path, chain: int, cwd: Path, sbatch: str = "sbatch") -> Submission:
    """Submit `chain` jobs of `script`, each after the previous one ends (afterany)."""
    sub = Submission(run_dir=script.parent, script=script)
    prev: Optional[str] = None
    for template in sbatch_commands(script, chain):
        cmd = [sbatch if c == "sbatch" else c.replace("{prev}", prev or "") for c in template]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        if done.returncode != 0:
            already = f" (already submitted: {', '.join(sub.job_ids)})" if sub.job_ids else ""
            raise SubmitError(f"{' '.join(cmd)} failed{already}: {done.stderr.strip() or done.stdout.strip()}")
        prev = _parse_job_id(done.stdout)
        sub.job_ids.append(prev)
        sub.commands.append(cmd)
    record = {
        "job_ids": sub.job_ids,
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "script": str(script),
        "commands": sub.commands,
        "cwd": str(cwd),
        "user": os.environ.get("USER", ""),
    }
    history_file = sub.run_dir / LAUNCH_RECORD
    history = json.loads(history_file.read_text()) if history_file.exists() else []
    history.append(record)
    history_file.write_text(json.dumps(history, indent=2) + "\n")
    return sub
