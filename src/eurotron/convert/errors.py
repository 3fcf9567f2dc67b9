"""The one error type of the converters: the CLI prints its message on one line and exits with 2."""

from __future__ import annotations

from ..errors import UserError


class ConvertError(UserError, ValueError):
    """A checkpoint or Hugging Face directory cannot be converted; the message says why and what to do."""
