"""The non-finite guard: decide, per step and identically on every rank, whether to apply the update.

No collective and no device-to-host read of its own. The step's loss sum is all-reduced over the
pipeline and data-parallel ranks and its gradient norm over every sharded dim and the pipeline
(``Trainer._sum_over_ranks``, ``parallel/grads.py``); IEEE sums propagate NaN and Inf, so those two
already-reduced scalars are non-finite on every rank as soon as any rank's part is. The finite flag
therefore rides on reductions the step does anyway, and every rank takes the same decision.

Two ways to apply it (issue 13: no per-step host sync):

* on the device (the default): ``nonfinite_flag`` is handed to fused AdamW as ``found_inf`` (the
  attribute GradScaler sets), which then leaves parameters, moments and its step counter untouched.
  The step's values stay on the device (``step_values``) and the host reads them, with those of the
  steps before, only on steps that need them (log, eval, checkpoint and last steps): ``check`` then
  runs over each step in order, counts and logs the skipped ones and raises a stop decision, which
  can therefore come up to ``logging.log_every - 1`` steps after the step it names.
* on the host, every step, before the update: with ``train.spike_sigma > 0`` (the spike rule needs
  the loss value) or an optimizer that is not fused (foreach / single_tensor AdamW refuse
  ``found_inf``): one read per step, as before.

On a skipped step the optimizer is not applied, the gradients are zeroed and the batch is consumed:
the step counter, the data position and the learning-rate schedule advance (as OLMo-core's skip-step
optimizer does; the host cannot hold the schedule back without reading the flag), as Megatron-LM and
OLMo skip a bad batch rather than retrying it. ``max_nonfinite_steps`` consecutive skipped steps
(non-finite or loss spikes) stop the run, since a model whose every step is skipped is not training.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ..config import TrainingConfig
from ..errors import UserError
from .checkpoint import LATEST


class TrainingHalted(UserError):
    """The run stopped because its numbers went bad (the CLI exits non-zero with this message)."""


@dataclass
class Verdict:
    apply: bool                      # run the optimizer and scheduler step
    reason: Optional[str] = None     # "nonfinite" | "spike" when skipped
    record: Dict[str, Any] = field(default_factory=dict)
    halt: Optional[str] = None       # the run must stop: the loop logs this step, then raises this


def halt_if_asked(record: Dict[str, Any]) -> None:
    """After the loop has logged the step: stop the run if the guard said so (all ranks alike)."""
    if record.get("halt"):
        raise TrainingHalted(record["halt"])


def step_values(loss: torch.Tensor, grad_norm: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The step's loss, gradient norm and kept-token count as one float64 device tensor (nothing read)."""
    values = [t.full_tensor() if isinstance(t, DTensor) else t for t in (loss, grad_norm, kept)]
    return torch.stack([v.detach().to(torch.float64).reshape(()) for v in values])


def read_step_values(pending: Sequence[torch.Tensor]) -> List[List[float]]:
    """The values of several steps (``step_values``) in one device-to-host read."""
    return torch.stack(list(pending)).tolist()


def nonfinite_flag(values: torch.Tensor) -> torch.Tensor:
    """1.0 where the loss or the gradient norm is NaN/Inf, else 0.0: fp32 on the device, as found_inf."""
    return (~torch.isfinite(values[:2])).any().to(torch.float32)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether this optimizer honours an on-device ``found_inf`` (fused AdamW does; foreach does not)."""
    return bool(optimizer.defaults.get("fused"))


class NonFiniteGuard:
    def __init__(self, cfg: TrainingConfig) -> None:
        self.mode = cfg.nonfinite
        self.max_consecutive = cfg.max_nonfinite_steps
        self.spike_sigma = cfg.spike_sigma
        self.window: Deque[float] = deque(maxlen=cfg.spike_window)
        self.nonfinite_steps = 0     # totals of this process (each record also says skipped: true)
        self.spike_steps = 0
        self.consecutive = 0
        self.skipped: List[int] = []  # step numbers, for tests and the end-of-run summary

    def _is_spike(self, loss: float) -> bool:
        if not self.spike_sigma or len(self.window) < (self.window.maxlen or 0):
            return False
        mean, std = statistics.fmean(self.window), statistics.pstdev(self.window)
        return loss > mean + self.spike_sigma * std

    def check(self, step: int, loss: float, grad_norm: float) -> Verdict:
        """``step`` is the number the step will have once done (1-based, as in metrics.jsonl)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.nonfinite_steps += 1
            verdict = Verdict(False, "nonfinite")
            if self.mode == "stop":
                verdict.halt = (f"step {step}: non-finite {_what(loss, grad_norm)}; stopping (train.nonfinite=stop). "
                                f"Resume from the last checkpoint with a lower optim.lr or train.nonfinite=skip")
        elif self._is_spike(loss):
            self.spike_steps += 1
            verdict = Verdict(False, "spike")
        else:
            self.window.append(loss)
            self.consecutive = 0
            return Verdict(True, record=self._counts(False))
        self.consecutive += 1
        self.skipped.append(step)
        if self.consecutive >= self.max_consecutive and not verdict.halt:
            verdict.halt = (
                f"step {step}: {self.consecutive} consecutive steps skipped (last: "
                f"{_what(loss, grad_norm) if verdict.reason == 'nonfinite' else 'loss spike ' + repr(loss)}), "
                f"train.max_nonfinite_steps={self.max_consecutive}; stopping. Resume from the last checkpoint "
                f"with a lower optim.lr (or a larger train.max_nonfinite_steps)")
        verdict.record = {**self._counts(True), "skip_reason": verdict.reason}
        if verdict.halt:
            verdict.record["halt"] = verdict.halt
        return verdict

    def _counts(self, skipped: bool) -> Dict[str, Any]:
        record: Dict[str, Any] = {"skipped": skipped, "nonfinite_steps": self.nonfinite_steps}
        if self.spike_sigma:
            record["spike_steps"] = self.spike_steps
        return record


def _what(loss: float, grad_norm: float) -> str:
    parts = [f"loss={loss}"] if not math.isfinite(loss) else []
    if not math.isfinite(grad_norm):
        parts.append(f"grad_norm={grad_norm}")
    return " and ".join(parts)


# ---------------------------------------------------------------------------- state before a save
def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def local_state_finite(modules: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> torch.Tensor:
    """1.0 where this rank's parameters and optimizer states hold a NaN/Inf, else 0.0 (on their device).

    One fused pass: the max-abs norm of every tensor (a NaN or Inf anywhere makes it non-finite, and
    unlike the L2 norm it cannot overflow on large finite values), no copy of any tensor.
    """
    tensors = [_local(p).detach() for m in modules for p in m.parameters()]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [_local(v) for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():  # foreach kernels take one device and dtype per call
            groups.setdefault((t.device, t.dtype), []).append(t)
    if not groups:
        return torch.zeros(())
    device = next(iter(groups))[0]
    worst = torch.stack([n.to(device, torch.float32) for ts in groups.values()
                         for n in torch._foreach_norm(ts, math.inf)]).amax()
    return (~torch.isfinite(worst)).float()


def check_state_before_save(step: int, modules, optimizers, device: torch.device, checkpoint_root: Path) -> None:
    """Refuse to checkpoint a non-finite model or optimizer state; every rank raises together."""
    bad = local_state_finite(modules, optimizers).to(device).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(bad)  # counts the ranks holding a NaN/Inf, so every rank refuses together
    ranks = int(bad.item())  # one read per save, not per step
    if ranks:
        pointer = Path(checkpoint_root) / LATEST
        latest = pointer.read_text().strip() if pointer.exists() else None
        where = f" on {ranks} rank(s)" if dist.is_initialized() else ""
        raise TrainingHalted(
            f"step {step}: refusing to save a checkpoint: the model or optimizer state holds NaN/Inf{where}; "
            f"checkpoints/latest is untouched ({latest or 'no checkpoint yet'}). Resume from it with a lower "
            f"optim.lr")
