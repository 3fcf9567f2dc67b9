"""Stop cleanly before Slurm's time limit: catch the signal, finish the step, checkpoint, requeue or exit.

The job script (launchers/) asks Slurm for a signal ``launch.signal_seconds`` before the time limit
(``--signal=B:USR2@300``). The batch shell receives it, writes the signal's name into
``$EUROTRON_PREEMPT_FILE`` and, where the ranks are Slurm tasks themselves, forwards the signal to
them. A rank learns of it either way: its own handler (USR2, or SIGTERM when Slurm ends the job)
sets a flag, and rank 0 looks for the file after every step (torchrun's ranks never see a signal
sent to the batch shell). All ranks agree on the flag so that they stop after the same step, without
a per-step wait (issue 13): after step s every rank starts a non-blocking MAX all-reduce of its flag
and, after step s+1, waits for that one (on GPUs: for an event recorded after the reduction and its
copy into pinned host memory, so the host never waits for the step it has just queued) and starts the
next. A multi-process run therefore stops one step after the signal arrived (a single process, with
nothing to agree on, after the step itself). The trainer writes its checkpoint and leaves its loop. Then
``finish()`` asks Slurm to requeue the job (``scontrol requeue $SLURM_JOB_ID``, when the script set
``EUROTRON_REQUEUE=1``) or simply returns, so the process exits 0 and the next job of a chain
(``--dependency=afterany``) resumes from ``latest``. SIGTERM never requeues: it means the job is being
cancelled or preempted, and Slurm decides what happens next.

Usage: ``install()`` before the trainer starts, ``stop_requested(trainer)`` after each step (the
hook in ``Trainer.fit``), ``drain()`` when the loop ends, ``finish()`` after ``fit`` returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

PREEMPT_FILE_ENV = "EUROTRON_PREEMPT_FILE"
REQUEUE_ENV = "EUROTRON_REQUEUE"
SIGNAL_ENV = "EUROTRON_SIGNAL"

# Agreed over all ranks with a MAX all-reduce: SIGTERM (end the job) outranks the time-limit warning.
NONE, WARNING, TERMINATE = 0, 1, 2
INSIST_AFTER_S = 10.0


@dataclass
class _State:
    installed: bool = False
    received: int = NONE          # set by this process's signal handlers
    received_name: str = ""
    received_at: float = 0.0
    stopping: int = NONE          # agreed by all ranks, once the trainer stopped for it
    stopped_at: Optional[int] = None


_state = _State()


def _warning_signal() -> signal.Signals:
    name = os.environ.get(SIGNAL_ENV, "USR2").upper().removeprefix("SIG")
    return signal.Signals[f"SIG{name}"]


def _handler(signum: int, _frame: Any) -> None:
    kind = TERMINATE if signum == signal.SIGTERM else WARNING
    now = time.monotonic()
    if _state.received == kind:
        # Slurm and torchrun may both pass on one SIGTERM: a repeat within INSIST_AFTER_S is the same
        # request; a later one means "now": die the default way.
        if now - _state.received_at >= INSIST_AFTER_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return
    _state.received = max(_state.received, kind)
    _state.received_name = signal.Signals(signum).name
    _state.received_at = now
    print(f"eurotron: {_state.received_name} received; stopping after this step with a checkpoint",
          file=sys.stderr, flush=True)


def install() -> None:
    """Catch the time-limit signal (USR2 or $EUROTRON_SIGNAL) and, inside a Slurm job, SIGTERM."""
    if _state.installed:
        return
    try:
        signal.signal(_warning_signal(), _handler)
        if os.environ.get("SLURM_JOB_ID") or os.environ.get(PREEMPT_FILE_ENV):
            # Outside Slurm a plain SIGTERM keeps its default meaning.
            signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not the main thread (e.g. an embedding application): rely on the flag file
        return
    _state.installed = True


def reset() -> None:
    """Forget a previous request (tests run several trainers in one process)."""
    global _state, _pending
    _state = _State(installed=_state.installed)
    _pending = None


def _flag_file_request() -> int:
    path = os.environ.get(PREEMPT_FILE_ENV)
    if not path or not os.path.exists(path):
        return NONE
    try:
        content = open(path, encoding="utf-8").read().strip().upper()
    except OSError:
        return NONE
    return TERMINATE if content in ("TERM", "SIGTERM") else WARNING


class _Agreement:
    """A MAX all-reduce of the flags, started now and read a step later without a device sync."""

    def __init__(self, local: int, device: torch.device) -> None:
        device = torch.device(device)
        source = torch.tensor([local], dtype=torch.int32, pin_memory=device.type == "cuda")
        self.flag = source.to(device, non_blocking=True)
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, async_op=True)
        self.host, self.event = self.flag, None
        if device.type == "cuda":
            self.work.wait()  # orders the stream after the reduction; the host goes on
            self.host = torch.empty(1, dtype=torch.int32, pin_memory=True)
            self.host.copy_(self.flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def result(self) -> int:
        if self.event is not None:
            self.event.synchronize()  # the previous step's reduction; this step's work stays queued
        else:
            self.work.wait()
        return int(self.host.numpy()[0])  # host memory: no device read


_pending: Optional[_Agreement] = None


def _agree(local: int, device: torch.device) -> int:
    """The flag agreed over all ranks one step ago (NONE at the first step); starts the next agreement."""
    global _pending
    if not dist.is_initialized():
        return local
    agreed = _pending.result() if _pending is not None else NONE
    _pending = _Agreement(local, device) if agreed == NONE else None
    return agreed


def drain() -> None:
    """Finish the agreement still in flight when the loop ends (every rank started it)."""
    global _pending
    if _pending is not None:
        _pending.result()
        _pending = None


def stop_requested(trainer: Any) -> bool:
    """Called by every rank after every step; True (on all ranks at once, one step after a request
    under several processes) when the run must stop now.

    Writes the checkpoint for this step unless the loop already wrote one this step or will write one
    when it ends (``checkpoint.save_final``), so exactly one is written before the requeue.
    """
    local = _state.received
    if not dist.is_initialized() or dist.get_rank() == 0:
        local = max(local, _flag_file_request())
    agreed = _agree(local, trainer.device)
    if agreed == NONE:
        return False
    _state.stopping, _state.stopped_at = agreed, trainer.step
    cfg = trainer.cfg.checkpoint
    saved_this_step = bool(cfg.every) and trainer.step % cfg.every == 0
    if not saved_this_step and not cfg.save_final:
        # The trainer's guarded save (finite state, watchdog, goodput) where it has one.
        getattr(trainer, "checkpoint_now", trainer.save_checkpoint)()
    if not dist.is_initialized() or dist.get_rank() == 0:
        reason = "the job is ending (SIGTERM)" if agreed == TERMINATE else "the time limit is near"
        print(f"eurotron: stopping at step {trainer.step}: {reason}; checkpoint written", flush=True)
    return True


def requeue_wanted() -> bool:
    return _state.stopping == WARNING and os.environ.get(REQUEUE_ENV, "0") == "1"


def finish() -> Optional[str]:
    """After the trainer stopped for a signal: requeue the Slurm job (rank 0) when configured.

    Returns the action taken: "requeued", "exit" (stopped, not requeued) or None (no signal).
    """
    if _state.stopping == NONE:
        return None
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)
    if not requeue_wanted():
        return "exit"
    job_id = os.environ.get("SLURM_JOB_ID")
    if rank != 0:
        return "requeued"
    if not job_id:
        print("eurotron: requeue asked for but SLURM_JOB_ID is not set; exiting", file=sys.stderr, flush=True)
        return "exit"
    # Array jobs are requeued by their own id (SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID).
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{array_task}" if array_job and array_task else job_id
    print(f"eurotron: requeueing Slurm job {target} (it resumes from the checkpoint)", flush=True)
    done = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scontrol requeue {target} failed ({done.returncode}): {done.stderr.strip()}; "
                           f"the checkpoint is written, resubmit the job to continue")
    return "requeued"
