"""Goodput: where the wall time of a job went, per attempt and over the whole job.

An *attempt* is one run of the trainer process (the first Slurm job, each requeue, each job of a
chain, each rerun by hand). Each attempt's wall time is split into buckets:

* ``startup_s``: from the start of this process (the kernel's start time of the process, read from
  ``/proc/self/stat``; the import time of this module where there is no /proc) to the start of the
  first training step: Python imports, config, process group, model build and parallelisation,
  opening the data, loading the checkpoint. Slurm's queueing and a container's start are not in it.
* ``train_s``: training steps (forward, backward, optimizer); ``skipped_s`` is the part spent on steps
  the non-finite guard skipped.
* ``eval_s``: evaluations; ``checkpoint_s``: the time the loop is blocked by checkpoint saves.
* ``lost_s``: work lost to the restart that began this attempt: the steps between the checkpoint it
  resumed from and the highest step the previous attempt had reached (``lost_steps``; known from the
  previous attempt's entry in goodput.json, written at every log step, so it may lag by up to
  ``logging.log_every - 1`` steps after a kill), times the previous attempt's median step time.
* ``other_s``: the rest (logging, signal checks, shut-down).

Over the job (every attempt since the run last started without resuming, ``checkpoint.resume=never``):
``goodput_pct = (train_s - skipped_s - lost_s) / wall_s``, the productive training time over the wall
time of the job's attempts (time spent queued between attempts is not wall time of the job here).

Rank 0 keeps ``<run_dir>/goodput.json`` (one entry per attempt plus the job totals), adds the job
totals to every metrics.jsonl record it logs (``time_*_s``, ``goodput_pct``) and prints a summary when
the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional

GOODPUT_FILE = "goodput.json"
BUCKETS = ("startup_s", "train_s", "skipped_s", "eval_s", "checkpoint_s", "lost_s")
_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """Epoch seconds at which this process started (Linux /proc), else when this module was imported."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + start_ticks / os.sysconf("SC_CLK_TCK")
        return started if started <= _IMPORTED_AT else _IMPORTED_AT  # btime has 1 s resolution
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


class StepTimes:
    """Recent training-step durations; the median leaves out the first steps (compilation, warm-up)."""

    def __init__(self, skip_first: int = 2, window: int = 100) -> None:
        self.skip_first = skip_first
        self.seen = 0
        self.recent: Deque[float] = deque(maxlen=window)

    def add(self, seconds: float) -> None:
        self.seen += 1
        if self.seen > self.skip_first:
            self.recent.append(seconds)

    def median(self) -> Optional[float]:
        return statistics.median(self.recent) if self.recent else None


class Goodput:
    def __init__(self, run_dir: Path, start_step: int, fresh: bool, enabled: bool) -> None:
        self.path = Path(run_dir) / GOODPUT_FILE
        self.enabled = enabled
        self.started_at = process_start_time()
        self.times = StepTimes()
        self.first_step_at: Optional[float] = None
        self.previous: List[Dict[str, Any]] = [] if fresh else self._read_previous()
        last = self.previous[-1] if self.previous else None
        self.lost_steps = max(0, int(last["reached_step"]) - start_step) if last else 0
        self._previous_median = last.get("median_step_s") if last else None
        self.attempt: Dict[str, Any] = {
            "attempt": len(self.previous) + 1,
            "started_at": round(self.started_at, 3),
            "start_step": start_step,
            "reached_step": start_step,
            "lost_steps": self.lost_steps,
            **{b: 0.0 for b in BUCKETS},
        }

    def _read_previous(self) -> List[Dict[str, Any]]:
        if not self.enabled or not self.path.exists():
            return []
        try:
            return list(json.loads(self.path.read_text())["attempts"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"eurotron: ignoring unreadable {self.path} ({err}); goodput restarts with this attempt",
                  file=sys.stderr, flush=True)
            return []

    # ------------------------------------------------------------------------------ timing
    @contextlib.contextmanager
    def phase(self, bucket: str) -> Iterator[None]:
        if bucket == "train_s" and self.first_step_at is None:
            self.first_step_at = time.time()
        began = time.perf_counter()
        try:
            yield
        finally:
            self.attempt[bucket] += time.perf_counter() - began

    def step_done(self, step: int, seconds: float, skipped: bool) -> None:
        self.times.add(seconds)
        if skipped:
            self.attempt["skipped_s"] += seconds
        self.attempt["reached_step"] = step

    def median_step_s(self) -> Optional[float]:
        return self.times.median()

    # ------------------------------------------------------------------------------ accounting
    def _settle(self) -> Dict[str, Any]:
        """This attempt's buckets as of now."""
        now = time.time()
        a = self.attempt
        a["startup_s"] = (self.first_step_at or now) - self.started_at
        median = self._previous_median or self.times.median() or 0.0
        a["lost_s"] = self.lost_steps * median
        a["median_step_s"] = self.times.median()
        a["wall_s"] = now - self.started_at
        a["other_s"] = a["wall_s"] - sum(a[b] for b in BUCKETS if b not in ("skipped_s", "lost_s"))
        return a

    def job_totals(self) -> Dict[str, Any]:
        attempts = [*self.previous, self._settle()]
        totals = {b: sum(float(a.get(b) or 0.0) for a in attempts) for b in (*BUCKETS, "wall_s")}
        productive = totals["train_s"] - totals["skipped_s"] - totals["lost_s"]
        totals["goodput_pct"] = 100.0 * max(0.0, productive) / totals["wall_s"] if totals["wall_s"] > 0 else 0.0
        totals["attempts"] = len(attempts)
        totals["lost_steps"] = sum(int(a.get("lost_steps") or 0) for a in attempts)
        return totals

    def record_fields(self) -> Dict[str, Any]:
        """Job totals for a metrics.jsonl record."""
        t = self.job_totals()
        fields = {f"time_{b}": round(t[b], 3) for b in (*BUCKETS, "wall_s")}
        fields["goodput_pct"] = round(t["goodput_pct"], 2)
        return fields

    def write(self, ended: Optional[str] = None) -> Dict[str, Any]:
        totals = self.job_totals()
        if ended:
            self.attempt["ended"] = ended
        if self.enabled:
            payload = {"attempts": [*self.previous, self.attempt], "job": totals}
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(_rounded(payload), indent=1, allow_nan=False) + "\n")
            os.replace(tmp, self.path)  # a kill mid-write leaves the previous file
        return totals

    def summary_line(self, totals: Dict[str, Any]) -> str:
        return (f"goodput {totals['goodput_pct']:.1f}% of {totals['wall_s']:.1f} s wall over "
                f"{totals['attempts']} attempt(s): start-up {totals['startup_s']:.1f} s, steps "
                f"{totals['train_s']:.1f} s (skipped {totals['skipped_s']:.1f} s), eval {totals['eval_s']:.1f} s, "
                f"checkpoints {totals['checkpoint_s']:.1f} s, lost to restarts {totals['lost_s']:.1f} s "
                f"({totals['lost_steps']} steps recomputed) -> {self.path}")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)  # microseconds: short CPU steps keep their relative precision
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
