"""A hang never holds an allocation: a per-rank watchdog thread that ends a stuck step.

The loop arms it around every phase that may block: a training step (with its collectives), an
evaluation and a checkpoint save. When a phase outlives its allowance the thread prints one line
naming the phase, the step and the timeout, dumps every thread's Python stack (faulthandler) to
stderr and ends the process with ``os._exit(EXIT_CODE)``; no clean-up runs, because a rank stuck in
a collective cannot be unwound. Every rank runs its own watchdog, so the ranks waiting on a stuck one
time out too and dump their own stacks; torchrun/srun then end the job non-zero and Slurm's requeue
or the next job of a chain resumes from ``latest``.

Allowances (``train.hang_timeout_s``, ``train.hang_timeout_save_s``):
* a step: the explicit value; or, with ``null`` (auto), FIRST_STEPS_S for the first WARMUP_STEPS
  steps of a process (compilation, first collectives, page cache), then max(FACTOR x the median of
  the recent step times, FLOOR_S); ``0`` turns the watchdog off;
* an evaluation: the step allowance times ``eval.batches`` (forward passes only, so generous);
* a checkpoint save: ``hang_timeout_save_s`` (writes to a parallel file system vary far more than
  steps do, hence its own, larger allowance; ``0`` leaves saves unwatched).

A thread needs the GIL to print; should the main thread hold it forever (a C extension spinning),
faulthandler's own C-level timer, armed BACKSTOP_S later, dumps the stacks and exits instead.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import socket
import sys
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

EXIT_CODE = 3
FLOOR_S = 600.0
FIRST_STEPS_S = 1800.0
FACTOR = 10.0
WARMUP_STEPS = 5
BACKSTOP_S = 60.0


class Watchdog:
    def __init__(self, hang_timeout_s: Optional[float], save_timeout_s: float, eval_batches: int,
                 median_step_s: Callable[[], Optional[float]]) -> None:
        self.explicit = hang_timeout_s
        self.save_timeout_s = save_timeout_s
        self.eval_batches = max(1, eval_batches)
        self.median_step_s = median_step_s
        self.enabled = hang_timeout_s != 0
        self.steps_watched = 0
        self._cond = threading.Condition()
        self._stack: List[Tuple[str, float, float]] = []  # (what, allowance, deadline)
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="eurotron-watchdog", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------------ allowances
    def step_allowance(self) -> float:
        if self.explicit is not None:
            return float(self.explicit)
        median = self.median_step_s()
        if self.steps_watched < WARMUP_STEPS or median is None:
            return FIRST_STEPS_S
        return max(FACTOR * median, FLOOR_S)

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[None]:
        with self._watch(f"step {step}", self.step_allowance(), "train.hang_timeout_s"):
            yield
        self.steps_watched += 1

    def between_steps(self, step: int) -> contextlib.AbstractContextManager:
        return self._watch(f"end of step {step}", self.step_allowance(), "train.hang_timeout_s")

    def evaluation(self, step: int) -> contextlib.AbstractContextManager:
        return self._watch(f"evaluation after step {step}", self.step_allowance() * self.eval_batches,
                           "train.hang_timeout_s x eval.batches")

    def save(self, step: int) -> contextlib.AbstractContextManager:
        if not self.save_timeout_s:
            return self._watch(f"checkpoint save at step {step}", 0.0, "")  # unwatched, still nests
        return self._watch(f"checkpoint save at step {step}", self.save_timeout_s, "train.hang_timeout_save_s")

    # ------------------------------------------------------------------------------ arming
    @contextlib.contextmanager
    def _watch(self, what: str, allowance: float, key: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        label = f"{what} ({key}={allowance:g} s)" if key else what
        self._push(label, allowance)
        try:
            yield
        finally:
            self._pop()

    def _push(self, label: str, allowance: float) -> None:
        with self._cond:
            deadline = time.monotonic() + allowance if allowance > 0 else float("inf")
            self._stack.append((label, allowance, deadline))
            self._arm_backstop(allowance)
            self._cond.notify()

    def _pop(self) -> None:
        with self._cond:
            self._stack.pop()
            if self._stack:  # back in the enclosing phase: its allowance starts afresh
                label, allowance, _ = self._stack[-1]
                deadline = time.monotonic() + allowance if allowance > 0 else float("inf")
                self._stack[-1] = (label, allowance, deadline)
                self._arm_backstop(allowance)
            else:
                faulthandler.cancel_dump_traceback_later()
            self._cond.notify()

    @staticmethod
    def _arm_backstop(allowance: float) -> None:
        if allowance > 0:
            faulthandler.dump_traceback_later(allowance + BACKSTOP_S, exit=True, file=_stderr())
        else:
            faulthandler.cancel_dump_traceback_later()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._stack.clear()
            faulthandler.cancel_dump_traceback_later()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._stack:
                    self._cond.wait()
                    continue
                label, allowance, deadline = self._stack[-1]
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(timeout=min(left, 3600.0))
                    continue
                self._fire(label, allowance)

    @staticmethod
    def _fire(label: str, allowance: float) -> None:
        rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
        print(f"eurotron: hang: {label} has run longer than {allowance:g} s on rank {rank} ({socket.gethostname()}); "
              f"a peer rank or node may have died or frozen; dumping the "
              f"Python stacks of every thread and exiting with code {EXIT_CODE} so the job can requeue or "
              f"continue from the last checkpoint", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=_stderr(), all_threads=True)
        os._exit(EXIT_CODE)


def _stderr():
    """faulthandler writes to a file descriptor: stderr's, or the original one where stderr was replaced."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__
