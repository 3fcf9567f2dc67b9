"""Where a run (or each point of a sweep) stands, from its run directory alone plus Slurm's commands:
job states, last step and losses, speed, goodput, last complete checkpoint and the ETA at the
current speed. Reads what eurotron-launch and the trainer write; imports no torch (login nodes).

  config.yaml     train.steps, name, cluster.name
  launch.json     the job ids of every submission (launch/submit.py)
  metrics.jsonl   step records (train/metrics.py); goodput.json the job's goodput (train/goodput.py)
  checkpoints/    complete step_* directories (train/checkpoint_retention.py)
  systems.jsonl   which system ran which steps (train/systems.py)
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..errors import UserError
from ..train.checkpoint_retention import complete_checkpoints
from ..train.goodput import GOODPUT_FILE
from ..train.metrics import METRICS_FILE, read_metrics, step_records
from .run_files import CONFIG_NAME, LAUNCH_RECORD
from .slurm_state import JobState, job_states
from .sweep import SUMMARY_JSON
from ..train.systems import SYSTEMS_FILE, read_systems

# Speed is measured over the last this many logged steps.
SPEED_WINDOW = 20


@dataclass
class RunStatus:
    run_dir: str
    name: str = ""
    cluster: str = ""
    total_steps: Optional[int] = None
    jobs: List[JobState] = field(default_factory=list)
    step: Optional[int] = None
    loss: Optional[float] = None
    eval_loss: Optional[float] = None
    eval_step: Optional[int] = None
    tokens_per_s: Optional[float] = None
    goodput_pct: Optional[float] = None
    checkpoint: Optional[str] = None
    checkpoint_step: Optional[int] = None
    seconds_per_step: Optional[float] = None
    eta_s: Optional[float] = None
    systems: List[Dict[str, Any]] = field(default_factory=list)
    # A sweep point's overrides that differ between points.
    label: str = ""

    @property
    def finished(self) -> bool:
        return self.step is not None and self.total_steps is not None and self.step >= self.total_steps

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["finished"] = self.finished
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err}); fix or remove it") from None


def _config(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / CONFIG_NAME
    try:
        cfg = yaml.safe_load(path.read_text())
    except OSError:
        raise UserError(f"{run_dir} is not a run directory: no {CONFIG_NAME} (pass a directory eurotron-launch "
                        f"or eurotron-train wrote, or a sweep directory with {SUMMARY_JSON})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({err})") from None
    return cfg if isinstance(cfg, dict) else {}


def job_ids(run_dir: Path) -> List[str]:
    """Every job id eurotron-launch submitted for this run dir, in submission order."""
    path = run_dir / LAUNCH_RECORD
    if not path.exists():
        return []
    return [str(j) for record in _read_json(path) for j in record.get("job_ids", [])]


def seconds_per_step(records: List[Dict[str, Any]]) -> Optional[float]:
    """Wall seconds per step over the recent logged steps (evals and checkpoints included) from the
    goodput totals each record carries; the median step time where they are missing."""
    recent = records[-SPEED_WINDOW:]
    walls = [(r["step"], r.get("time_wall_s")) for r in recent if r.get("time_wall_s") is not None]
    if len(walls) >= 2 and walls[-1][0] > walls[0][0] and walls[-1][1] > walls[0][1]:
        return (walls[-1][1] - walls[0][1]) / (walls[-1][0] - walls[0][0])
    times = [r["step_time_s"] for r in recent if r.get("step_time_s")]
    return statistics.median(times) if times else None


def run_status(run_dir: Path, query_slurm: bool = True) -> RunStatus:
    run_dir = Path(run_dir).absolute()
    cfg = _config(run_dir)
    status = RunStatus(run_dir=str(run_dir), name=str(cfg.get("name", "")),
                       cluster=str((cfg.get("cluster") or {}).get("name", "")),
                       total_steps=(cfg.get("train") or {}).get("steps"))
    ids = job_ids(run_dir)
    status.jobs = job_states(ids) if query_slurm else [JobState(j, "not queried", "none") for j in ids]
    metrics = run_dir / METRICS_FILE
    records = step_records(read_metrics(metrics)) if metrics.exists() else []
    if records:
        last = records[-1]
        status.step, status.loss, status.tokens_per_s = last["step"], last.get("loss"), last.get("tokens_per_s")
        status.goodput_pct = last.get("goodput_pct")
        evals = [r for r in records if r.get("eval_loss") is not None]
        if evals:
            status.eval_step, status.eval_loss = evals[-1]["step"], evals[-1]["eval_loss"]
        status.seconds_per_step = seconds_per_step(records)
        if status.seconds_per_step is not None and status.total_steps is not None:
            status.eta_s = max(status.total_steps - status.step, 0) * status.seconds_per_step
    goodput = run_dir / GOODPUT_FILE
    if goodput.exists():  # written after the last log step too: the job's final figure
        status.goodput_pct = (_read_json(goodput).get("job") or {}).get("goodput_pct", status.goodput_pct)
    ckpts = complete_checkpoints(run_dir / "checkpoints")
    if ckpts:
        status.checkpoint_step, path = ckpts[-1]
        status.checkpoint = path.name
    if (run_dir / SYSTEMS_FILE).exists():
        status.systems = read_systems(run_dir)
    return status


def is_sweep(path: Path) -> bool:
    return (Path(path) / SUMMARY_JSON).exists()


def sweep_status(sweep_dir: Path, query_slurm: bool = True) -> List[RunStatus]:
    """One RunStatus per point of sweep.json, labelled with the overrides that vary between points."""
    points = _read_json(Path(sweep_dir) / SUMMARY_JSON)
    if not isinstance(points, list):
        raise UserError(f"{Path(sweep_dir) / SUMMARY_JSON} is not a list of sweep points")
    # Only what varies labels a point (a single point varies in nothing).
    common = set.intersection(*(set(p.get("overrides", [])) for p in points)) if points else set()
    out = []
    for point in points:
        run_dir = Path(point["run_dir"])
        if (run_dir / CONFIG_NAME).exists():
            status = run_status(run_dir, query_slurm)
        else:  # a point whose submission failed, or a dry run: nothing was written
            status = RunStatus(run_dir=str(run_dir))
        status.label = f"#{point.get('num', '?')} " + (
            " ".join(o for o in point.get("overrides", []) if o not in common) or "-")
        out.append(status)
    return out
