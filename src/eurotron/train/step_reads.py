"""Step values that stay on the device until a step needs them (issue 13: no per-step host sync).

Each training step leaves its loss, gradient norm and kept-token count on the device (one small float64
tensor, ``nonfinite.step_values``) beside its host-side record. On a step that must read (log, eval,
checkpoint, last step, or every step when the guard decides on the host) ``complete`` reads all unread
steps in one device-to-host copy and, in step order, fills their records and lets the non-finite guard
judge each, exactly as if it had read every step.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from .nonfinite import NonFiniteGuard, read_step_values


class DeferredReads:
    def __init__(self, guard: NonFiniteGuard) -> None:
        self.guard = guard
        self.unread: List[Tuple[Dict[str, Any], torch.Tensor]] = []

    def add(self, record: Dict[str, Any], values: torch.Tensor) -> None:
        self.unread.append((record, values))

    def complete(self) -> List[Dict[str, Any]]:
        """Read every unread step (one read) and judge it; returns their records, oldest first."""
        if not self.unread:
            return []
        pending, self.unread = self.unread, []
        records = []
        for (record, _), (loss, norm, kept) in zip(pending, read_step_values([v for _, v in pending])):
            verdict = self.guard.check(record["step"], loss, norm)
            record.update(loss=loss, grad_norm=norm, kept_tokens=int(kept), **verdict.record)
            records.append(record)
        return records
