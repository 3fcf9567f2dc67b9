"""Compose configs from Python (tests, scripts, notebooks) exactly as the CLIs do."""

from __future__ import annotations

from typing import Sequence, Tuple

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from .config import PrepareConfig, TrainConfig, register_configs, to_object
from .paths import config_dir


def compose_raw(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_train(overrides: Sequence[str] = ()) -> Tuple[TrainConfig, str]:
    """The typed TrainConfig plus its resolved YAML (what a run directory stores)."""
    raw = compose_raw("train", overrides)
    return to_object(raw, TrainConfig), OmegaConf.to_yaml(raw, resolve=True)


def compose_prepare(overrides: Sequence[str] = ()) -> PrepareConfig:
    return to_object(compose_raw("prepare", overrides), PrepareConfig)

