"""Next-token cross-entropy summed over kept tokens; the trainer divides by the global kept count.

It lives with the model so that ``parallel/`` (the pipeline's last stage computes it) needs nothing
from ``train/``.

Summing here and dividing once by the number of kept tokens in the whole global batch (all
micro-batches, all data-parallel ranks) makes every layout compute the same gradient (DESIGN.md 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_labels(labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Labels with excluded positions set to IGNORE_INDEX (a new tensor; the batch stays untouched)."""
    return labels.masked_fill(~loss_mask.bool(), IGNORE_INDEX)


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token losses over positions where loss_mask is True (fp32 accumulation)."""
    targets = masked_labels(labels, loss_mask)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(0, 1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
