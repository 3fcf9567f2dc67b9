"""Parameter counts of a built model; counts and FLOPs from a config alone live in ``plan/flops.py``."""

from __future__ import annotations

from torch import nn

from ..plan.flops import matmul_parameters, model_flops_per_token  # noqa: F401  (re-exported)


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of parameters, each shared tensor counted once (tied embeddings count once).

    Works on the meta device and on DTensor-sharded models (a DTensor reports its global size).
    ``exclude_embeddings`` leaves out the input embedding table (a lookup, not a matmul); the output
    projection is kept unless it is tied to the embedding.
    """
    seen: set[int] = set()
    total = 0
    embedding_ids = set()
    if exclude_embeddings:
        embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for param in model.parameters():
        if id(param) in seen or id(param) in embedding_ids:
            continue
        seen.add(id(param))
        total += param.numel()
    return total
