"""The checkpoint errors a user can act on; the CLIs print them as one message (UserError)."""

from __future__ import annotations

from ..errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing or incomplete; the message says which and what to do."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file does not match the checksum or size its manifest recorded, or is missing."""


class NotEnoughSpaceError(CheckpointError):
    """The checkpoint directory's file system cannot hold the next checkpoint."""
