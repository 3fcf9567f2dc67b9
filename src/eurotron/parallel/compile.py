"""Per-block ``torch.compile`` (``fullgraph=True``), applied after TP and activation checkpointing and
before FSDP, as torchtitan orders it.

Only the block's ``forward`` is compiled (replaced on the instance), not ``Module.__call__``:
  * the graph holds the TP redistributions of the sub-modules and the checkpointed region (both are
    set up before, inside the forward), so inductor sees and fuses them;
  * FSDP2's all-gather / reshard hooks, added to the block afterwards, run eagerly around it;
  * parameter FQNs stay ``layers.<i>....`` (no ``_orig_mod``), so checkpoints are layout-free.
``fullgraph=True`` turns any graph break into an error at the first step instead of a silent slowdown.
All blocks share one code object, so a same-shaped block reuses the first block's graph.
"""

from __future__ import annotations

import torch

from ..model.transformer import Transformer


def apply_compile(part: Transformer) -> None:
    """Compile the forward of every transformer block of ``part`` in place."""
    for block in part.layers.values():
        block.forward = torch.compile(block.forward, fullgraph=True)
