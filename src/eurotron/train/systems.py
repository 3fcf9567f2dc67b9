"""<run_dir>/systems.jsonl: which system, in which layout, ran which steps of a run.

eurotron-launch appends a ``launch`` line per submission (system, layout, world size, job ids, the
step the job starts from); the trainer (rank 0) appends a ``trained`` line at each periodic checkpoint
(ended: running) and when it stops (first and last step it ran, its Slurm job id); a later line of
the same stretch supersedes the earlier ones (``stretches``). A run moved between systems
(launch.continue_run) reads as one history. Torch-free: eurotron-status reads it on login nodes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

SYSTEMS_FILE = "systems.jsonl"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def layout_of(parallel: Any) -> str:
    return f"tp={parallel.tp} pp={parallel.pp} dp_replicate={parallel.dp_replicate} dp_shard={parallel.dp_shard}"


def append_record(run_dir: Path, record: Dict[str, Any]) -> None:
    path = Path(run_dir) / SYSTEMS_FILE
    with path.open("a") as f:
        f.write(json.dumps({**record, "time": utc_now()}) + "\n")


def record_trained(run_dir: Path, cfg: Any, first_step: int, last_step: int, ended: str) -> None:
    """The trainer's line: steps first_step..last_step ran on cfg.cluster.name in cfg.parallel's layout."""
    append_record(run_dir, {
        "event": "trained", "system": cfg.cluster.name, "layout": layout_of(cfg.parallel),
        "world_size": cfg.parallel.world_size, "job_id": os.environ.get("SLURM_JOB_ID"),
        "first_step": first_step, "last_step": last_step, "ended": ended,
    })


def read_systems(run_dir: Path) -> List[Dict[str, Any]]:
    """The records, oldest first; a line cut short by a kill is skipped."""
    path = Path(run_dir) / SYSTEMS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def stretches(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The ``trained`` records, one per stretch of training (the trainer process that started at
    first_step on that system and job): the latest record of each, in the order they began."""
    latest: Dict[tuple, Dict[str, Any]] = {}
    for r in records:
        if r.get("event") == "trained":
            latest[(r.get("system"), r.get("job_id"), r.get("first_step"))] = r  # dicts keep first-seen order
    return list(latest.values())


def steps_by_system(records: List[Dict[str, Any]]) -> List[str]:
    """One line per stretch of training, e.g. 'steps 1-4 on lumi (tp=2 ...; 4 rank(s)), job 123'."""
    lines = []
    for r in stretches(records):
        job: Optional[str] = r.get("job_id")
        lines.append(f"steps {r['first_step']}-{r['last_step']} on {r['system']} ({r['layout']}; "
                     f"{r['world_size']} rank(s)){f', job {job}' if job else ''}, {r.get('ended', '?')} {r['time']}")
    return lines
