"""Where a process's start-up went, from its start to the end of its first training step.

Parts (seconds): ``launch`` (in a job eurotron-launch rendered: from the job script's start, exported
as EUROTRON_JOB_STARTED_AT, to this process's start: srun/torchrun spawning the ranks), ``imports`` (process start to the trainer's construction: interpreter, torch, config),
``rendezvous`` (process group init: waiting for every rank, on every node), ``mesh``, ``data_open``
(datasets, tokenizer check, loader), ``model_build`` (model, parallelisation, optimizers), ``resume``
(run dir, checkpoint load), ``first_step`` and ``other``. Rank 0 prints one line and logs a
``startup`` event to metrics.jsonl; multi-node start-up is dominated by imports on shared file
systems and by the rendezvous, which is why they are separate.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Optional

from .goodput import process_start_time

PARTS = ("launch", "imports", "rendezvous", "mesh", "data_open", "model_build", "resume", "first_step")


class StartupClock:
    def __init__(self) -> None:
        self.started_at = process_start_time()
        self._last = time.time()
        self.parts: Dict[str, float] = {"imports": self._last - self.started_at}
        self.job_started_at = _job_started_at()
        # The process start has the kernel's boot-time resolution (1 s): a job start up to 1 s "after" it
        # is the same moment.
        if self.job_started_at is not None and self.job_started_at <= self.started_at + 1.0:
            self.parts["launch"] = max(self.started_at - self.job_started_at, 0.0)
        self.total_s: Optional[float] = None

    def mark(self, part: str) -> None:
        """The time since the previous mark is `part`'s (added to it when marked twice)."""
        now = time.time()
        self.parts[part] = self.parts.get(part, 0.0) + now - self._last
        self._last = now

    def skip(self) -> None:
        """Time up to now belongs to no named part (lands in ``other``)."""
        self._last = time.time()

    def finish(self) -> Dict[str, float]:
        """After the first step: the total and ``other`` (whatever no part claimed)."""
        self.mark("first_step")
        self.total_s = self._last - self.started_at + self.parts.get("launch", 0.0)
        self.parts["other"] = max(self.total_s - sum(self.parts.get(p, 0.0) for p in PARTS), 0.0)
        return self.record()

    def record(self) -> Dict[str, float]:
        out = {f"{p}_s": round(self.parts.get(p, 0.0), 3) for p in (*PARTS, "other")}
        out["total_s"] = round(self.total_s or 0.0, 3)
        return out

    def line(self) -> str:
        parts = ", ".join(f"{p.replace('_', ' ')} {self.parts.get(p, 0.0):.1f} s" for p in (*PARTS, "other"))
        since = "job start" if "launch" in self.parts else "process start"
        return f"start-up: {self.total_s or 0.0:.1f} s from {since} to the end of the first step: {parts}"


def _job_started_at() -> Optional[float]:
    try:
        return float(os.environ["EUROTRON_JOB_STARTED_AT"])
    except (KeyError, ValueError):
        return None
