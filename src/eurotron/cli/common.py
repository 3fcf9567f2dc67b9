"""Shared plumbing of the Hydra command-line apps: schema registration, typed configs, clean errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
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


@dataclass(frozen=True)
class SweepContext:
    """Where one point of a Hydra multirun (`-m`) stands: its number, its overrides and its directories."""

    num: int
    overrides: List[str]
    sweep_dir: Path
    point_dir: str  # <sweep dir>/<num>: the point's run dir unless run_dir was overridden
    run_dir_overridden: bool


def sweep_context() -> Optional[SweepContext]:
    """The current multirun point, or None outside a multirun."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    overrides = list(hc.overrides.task)
    return SweepContext(
        num=hc.job.num, overrides=overrides, sweep_dir=Path(str(hc.sweep.dir)).absolute(),
        point_dir=str(hc.runtime.output_dir),
        run_dir_overridden=any(o.split("=", 1)[0].lstrip("+~") == "run_dir" for o in overrides))


def check_experiment_names(argv: List[str]) -> None:
    """`experiment=<name>` (or a sweep `experiment=a,b`) must name recipes that exist: checked before
    Hydra starts, so no point of a sweep is trained or submitted when another names no recipe."""
    from ..config import ConfigError
    from ..paths import config_dir

    if any(arg.startswith(("hydra.searchpath", "--config-dir", "-cd", "--config-path", "-cp")) for arg in argv):
        return  # recipes may come from elsewhere: Hydra's own check (experiment is not optional) applies
    recipes_dir = config_dir() / "experiment"
    available = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != "experiment" or any(c in value for c in "()[]{}$*"):
            continue  # Hydra's sweep functions, globs and interpolations: Hydra itself reports those
        missing = [name for name in value.split(",") if name and name != "null" and name not in available]
        if missing:
            raise ConfigError(f"experiment={','.join(missing)}: no such recipe in {recipes_dir}; "
                              f"available: {', '.join(available)}")


def exit_on_user_error(app: str, fn: Callable[[], T]) -> T:
    """Run `fn`; a ConfigError or other user-facing error ends the process with one clear message."""
    try:
        return fn()
    except (UserError, FileNotFoundError) as err:
        print(f"{app}: error: {err}", file=sys.stderr)
        sys.exit(2)
