"""A checkpoint path given on a command line, checked before anything loads it: a clear message for
a file, a missing directory, a half-written ``.tmp_step_*`` or a step directory missing its files
(instead of a FileNotFoundError or a DCP traceback from deep inside the loader)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

# What CheckpointManager writes into every complete step directory (train/checkpoint.py).
STEP_FILES = ("config.yaml", "trainer.json", "model_optim/.metadata")


class CheckpointPathError(UserError, ValueError):
    """The checkpoint path names no usable checkpoint."""


def check_checkpoint_path(path: Path, flag: str = "checkpoint") -> None:
    use = "give the run directory (it loads `latest`) or a complete checkpoints/step_* directory"
    if not path.exists():
        raise CheckpointPathError(f"{flag} {path}: no such directory; {use}")
    if not path.is_dir():
        raise CheckpointPathError(f"{flag} {path} is a file, not a checkpoint directory; {use}")
    if path.name.startswith(".tmp_"):
        raise CheckpointPathError(
            f"{flag} {path} is a half-written checkpoint (a save that did not finish); {use}")
    if path.name.startswith("step_") or (path / "trainer.json").exists():
        missing = [name for name in STEP_FILES if not (path / name).exists()]
        if missing:
            raise CheckpointPathError(
                f"{flag} {path} is an incomplete checkpoint (missing {', '.join(missing)}); {use}")
