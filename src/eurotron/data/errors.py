"""Errors of the data path. Each message names the file or config key at fault and how to fix it."""

from __future__ import annotations

from ..errors import UserError


class DataError(UserError, ValueError):
    """Bad input data, a bad prepared dataset, or a data setting that cannot work."""


class ShardError(DataError):
    """A token shard (.bin/.idx) is missing, corrupt or does not match its manifest."""
