"""Sweep summary of `eurotron-launch -m ...` (job ids, overrides, run dir per point) and of
`eurotron-train -m ...` (overrides, run dir, final losses per point).

Hydra's basic launcher runs the points one after another in this process; each point records itself
here and the summary (sweep.json + sweep.md in the sweep directory) is rewritten after every point, so
it is complete even when a later point fails. ``SweepSummary`` (a Hydra callback, see
configs/launch.yaml) prints the table when the sweep ends.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.experimental.callback import Callback

SUMMARY_JSON = "sweep.json"
SUMMARY_MD = "sweep.md"


@dataclass
class SweepPoint:
    num: int
    overrides: List[str]
    run_dir: str
    job_ids: List[str] = field(default_factory=list)
    dry_run: bool = False
    # eurotron-train: the last logged training step and its losses (None: not trained in this process).
    final_step: Optional[int] = None
    final_loss: Optional[float] = None
    final_eval_loss: Optional[float] = None


_points: List[SweepPoint] = []
_sweep_dir: Optional[Path] = None


def record_point(sweep_dir: Path, point: SweepPoint) -> None:
    global _sweep_dir
    if _sweep_dir != sweep_dir or point.num == 0:
        _points.clear()
        _sweep_dir = sweep_dir
    _points[:] = [p for p in _points if p.num != point.num] + [point]
    _points.sort(key=lambda p: p.num)
    if not point.dry_run:
        write_summary(sweep_dir, _points)


def format_table(points: List[SweepPoint]) -> str:
    """Markdown table; the overrides column shows what varies between points (all of them in sweep.json)."""
    common = set.intersection(*(set(p.overrides) for p in points)) if len(points) > 1 else set()
    trained = any(p.final_step is not None for p in points)
    header = ["#", "overrides", "run dir", "step", "loss", "eval loss"] if trained else \
        ["#", "job ids", "overrides", "run dir"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        varying = " ".join(o for o in p.overrides if o not in common) or "-"
        if trained:
            row = [str(p.num), varying, p.run_dir,
                   _cell(p.final_step, "d"), _cell(p.final_loss, ".4f"), _cell(p.final_eval_loss, ".4f")]
        else:
            jobs = ", ".join(p.job_ids) if p.job_ids else ("(dry run)" if p.dry_run else "-")
            row = [str(p.num), jobs, varying, p.run_dir]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def write_summary(sweep_dir: Path, points: List[SweepPoint]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SUMMARY_JSON).write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
    (sweep_dir / SUMMARY_MD).write_text(f"# Sweep {sweep_dir}\n\n{format_table(points)}\n")


class SweepSummary(Callback):
    """Prints the sweep's table when Hydra's multirun ends; after a dry run, takes back the directories
    Hydra made for the sweep (a dry run writes nothing)."""

    def __init__(self, app: str = "eurotron-launch") -> None:
        self.app = app
        self._created: Optional[Path] = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        self._created = None if sweep_dir.exists() else sweep_dir

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not _points or _sweep_dir is None:
            return
        dry = all(p.dry_run for p in _points)
        where = "" if dry else f" (written to {_sweep_dir / SUMMARY_MD})"
        print(f"{self.app}: sweep of {len(_points)} point(s){where}\n{format_table(_points)}", flush=True)
        if dry and self._created is not None and self._created == _sweep_dir:
            _remove_empty_sweep_dir(_sweep_dir)


def _remove_empty_sweep_dir(sweep_dir: Path) -> None:
    """Hydra's multirun.yaml and the empty point directories, nothing else."""
    (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
    for child in sweep_dir.iterdir():
        if child.is_dir() and not any(child.iterdir()):
            child.rmdir()
    if not any(sweep_dir.iterdir()):
        sweep_dir.rmdir()
