"""Tied embeddings against what the checkpoint holds: a config that says ``tie_embeddings: true``
while ``output.weight`` differs from the embedding would export the embedding as the LM head and
drop the trained head (data loss); a config that says untied with no ``output.weight`` cannot be
exported either. Both stop with the fix, before anything is written."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from .dcp_reader import DCPTensorReader
from .errors import ConvertError

EMBED, HEAD = "tok_embeddings.weight", "output.weight"
BLOCK_BYTES = 256 * 2**20  # compared in row blocks: peak memory two blocks, even for a 128k x 8k table


def check_tied_embeddings(reader: DCPTensorReader, cfg: ModelConfig, config_file: Path) -> None:
    if not cfg.tie_embeddings:
        if HEAD not in reader and EMBED in reader:
            raise ConvertError(
                f"{config_file} says model.tie_embeddings: false, but the checkpoint {reader.path} holds no "
                f"{HEAD} (it was trained with tied embeddings); set model.tie_embeddings: true in {config_file}"
            )
        return
    if HEAD not in reader or EMBED not in reader or reader.shape(HEAD) != reader.shape(EMBED):
        return  # check_tensors names what is missing or misshapen
    worst = 0.0
    for head, embed in zip(reader.read_blocks(HEAD, torch.float32, BLOCK_BYTES),
                           reader.read_blocks(EMBED, torch.float32, BLOCK_BYTES)):
        worst = max(worst, float((head - embed).abs().max()))
    if worst > 0:
        raise ConvertError(
            f"{config_file} says model.tie_embeddings: true, but the checkpoint's {HEAD} (the LM head) differs "
            f"from its {EMBED} (max |difference| {worst:.3g}): it was trained untied, and a tied export would "
            f"drop the trained head. Set model.tie_embeddings: false in {config_file} and convert again"
        )
