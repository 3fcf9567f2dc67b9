"""The Slurm state of job ids, from the login node: squeue for queued and running jobs, sacct for
ended ones, and `scontrol show job` where accounting is off (it remembers ended jobs for MinJobAge,
5 minutes by default). A job none of them knows is reported as such, with the reason."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


@dataclass
class JobState:
    job_id: str
    state: str
    # Where the state came from: squeue | sacct | scontrol | none.
    source: str
    elapsed: str = ""
    time_limit: str = ""
    # squeue's reason (pending) or node list (running); sacct's/scontrol's exit code.
    detail: str = ""
    restarts: Optional[int] = None


def _run(cmd: List[str], timeout: float = 30) -> Optional[subprocess.CompletedProcess]:
    """None when the command is not on PATH or does not answer in time."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _squeue(ids: Sequence[str]) -> Dict[str, JobState]:
    done = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%M|%l|%R"])
    out: Dict[str, JobState] = {}
    if done is None or done.returncode != 0:  # squeue -j errors out when every id has left the queue
        return out
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5 and parts[0] in ids:
            out[parts[0]] = JobState(parts[0], parts[1], "squeue", parts[2], parts[3], parts[4])
    return out


def _sacct(ids: Sequence[str]) -> Optional[Dict[str, JobState]]:
    """None when sacct cannot answer (not installed, or "accounting storage is disabled")."""
    done = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,Elapsed,Timelimit,ExitCode"])
    if done is None or done.returncode != 0:
        return None
    out: Dict[str, JobState] = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5 and parts[0] in ids:
            # "CANCELLED by 1000" -> CANCELLED; a requeued job shows its latest run last.
            out[parts[0]] = JobState(parts[0], parts[1].split()[0], "sacct", parts[2], parts[3], parts[4])
    return out


def _scontrol(job_id: str) -> Optional[JobState]:
    done = _run(["scontrol", "show", "job", "-o", job_id])
    if done is None or done.returncode != 0:
        return None
    fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
    if "JobState" not in fields:
        return None
    restarts = fields.get("Restarts")
    return JobState(job_id, fields["JobState"], "scontrol", fields.get("RunTime", ""), fields.get("TimeLimit", ""),
                    fields.get("ExitCode", ""), int(restarts) if restarts and restarts.isdigit() else None)


def job_states(job_ids: Sequence[str]) -> List[JobState]:
    """One JobState per id, in the order given."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return []
    if shutil.which("squeue") is None:
        return [JobState(j, "unknown (no squeue on PATH: not a Slurm login node)", "none") for j in ids]
    found = _squeue(ids)
    missing = [j for j in ids if j not in found]
    accounting = _sacct(missing) if missing else {}
    if accounting is not None:
        found.update(accounting)
    for job_id in ids:
        if job_id not in found:
            known = _scontrol(job_id) if accounting is None else None
            found[job_id] = known or JobState(
                job_id, "unknown (no accounting)" if accounting is None else "unknown (not in sacct)", "none")
    return [found[j] for j in ids]
