"""Shared plumbing of the Hydra command-line apps: schema registration, typed configs, clean errors."""

from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf

from ..config import register_configs, to_object
from ..errors import UserError

T = TypeVar("T")

register_configs()


def typed_config(cfg: DictConfig, schema: type) -> Any:
    """Resolve interpolations and convert to the schema's dataclasses."""
    return to_object(cfg, schema)


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def exit_on_user_error(app: str, fn: Callable[[], T]) -> T:
    """Run `fn`; a ConfigError or other user-facing error ends the process with one clear message."""
    try:
        return fn()
    except (UserError, FileNotFoundError) as err:
        print(f"{app}: error: {err}", file=sys.stderr)
        sys.exit(2)
