"""Activation checkpointing and per-block ``torch.compile``, applied without renaming any parameter.

Both use the module-level APIs (composable ``checkpoint`` and ``nn.Module.compile``), so parameter
FQNs stay ``layers.<i>....`` and checkpoints are interchangeable with runs that use neither.
"""

from __future__ import annotations

from typing import List

from torch.distributed._composable import checkpoint

from ..model.transformer import Transformer


def checkpointed_layers(mode: str, every: int, layer_ids: List[int]) -> List[int]:
    """Which global layer ids recompute their activations: all (full), every ``every``-th (selective)."""
    if mode == "full":
        return list(layer_ids)
    if mode == "selective":
        return [i for i in layer_ids if i % every == 0]
    return []


def apply_activation_checkpointing(part: Transformer, mode: str, every: int) -> List[int]:
    """Recompute the chosen blocks' activations in backward; returns their layer ids."""
    chosen = checkpointed_layers(mode, every, [int(k) for k in part.layers.keys()])
    for layer_id in chosen:
        checkpoint(part.layers[str(layer_id)])
    return chosen


def apply_compile(part: Transformer) -> None:
    """Compile each transformer block in place (blocks are identical, so one graph is reused)."""
    for block in part.layers.values():
        block.compile(fullgraph=False)
