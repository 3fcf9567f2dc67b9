"""Structured config schema for every eurotron app, registered in Hydra's ConfigStore.

One module per application — ``train`` (eurotron-train / -launch; its ``cluster`` group in
``cluster``), ``prepare`` and ``summary`` — all re-exported here. The dataclasses are the single
source of truth for which keys exist and what type they have: Hydra composes the YAML tree in
``configs/`` on top of them, so a misspelt key or a wrong type fails at composition. ``validate_train_config`` then checks what types cannot express (divisibility,
limits, consistency between groups) before any work starts, and names the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError
from omegaconf.nodes import BooleanNode

from ..errors import UserError
# Re-exported: callers import every schema from eurotron.config.
from .cluster import (BillingConfig, ClusterConfig, ContainerConfig, InterconnectConfig,  # noqa: F401
                      LauncherConfig, PartitionLimits, SlurmConfig, StorageConfig)
from .prepare import (AI_CRAWLER_AGENTS, DedupConfig, FiltersConfig, OptOutConfig,  # noqa: F401
                      PiiConfig, PrepareConfig, SourceConfig, StagedConfig, TokenizerConfig)
from .summary import SummaryConfig, SummaryModelConfig, SummaryProviderConfig  # noqa: F401
from .train import (BlendSourceConfig, CheckpointConfig, DataConfig, EvalConfig,  # noqa: F401
                    DeepSpeedConfig, GenerateConfig, HFExportConfig, LaunchConfig, LoggingConfig, LossConfig, ModelConfig,
                    OptimConfig, ParallelConfig, PlanConfig, RopeScalingConfig, SchedulerConfig, TrainConfig, TrainingConfig,
                    WandbConfig)


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names the key, the value and the fix."""


_REGISTERED = False


def _strict_bool(self: BooleanNode, value: Any) -> bool:
    """OmegaConf reads 2, "2", "yes" and "on" as true; a switch here takes true or false only, so a
    mistyped value (data.shuffle=2) is an error at composition instead of a silent `true`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValidationError(f"Value '{value}' is not a valid bool (type {type(value).__name__}): write true or false")


def strict_booleans() -> None:
    """Make every boolean config node strict (idempotent; applies to all OmegaConf configs of the process)."""
    BooleanNode._validate_and_convert_impl = _strict_bool  # type: ignore[method-assign]
# Nested schemas by class name (fields are annotated as strings under `from __future__ import annotations`).
_SCHEMAS_BY_NAME = {
    cls.__name__: cls
    for cls in (RopeScalingConfig, HFExportConfig, DeepSpeedConfig, ModelConfig, ParallelConfig, DataConfig, LossConfig, OptimConfig,
                SchedulerConfig, WandbConfig, LoggingConfig, ClusterConfig, CheckpointConfig, EvalConfig,
                PartitionLimits, SlurmConfig, ContainerConfig, StorageConfig, LauncherConfig, LaunchConfig,
                TrainingConfig, GenerateConfig, TrainConfig, SourceConfig, TokenizerConfig, PrepareConfig,
                BlendSourceConfig, OptOutConfig, PiiConfig, DedupConfig, FiltersConfig,
                SummaryProviderConfig, SummaryModelConfig, SummaryConfig, InterconnectConfig, BillingConfig,
                PlanConfig, StagedConfig)
}


def register_configs() -> None:
    """Register the schemas so YAML files can extend them (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    strict_booleans()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="summary_schema", node=SummaryConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="parallel", name="parallel_schema", node=ParallelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="scheduler", name="scheduler_schema", node=SchedulerConfig)
    cs.store(group="logging", name="logging_schema", node=LoggingConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    _REGISTERED = True


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra's `+key=value` can force a key into a structured node; refuse it instead of dropping it."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{dotted}: no such key; valid keys here: {', '.join(sorted(fields))}")
        child_type = fields[key].type
        child_schema = _SCHEMAS_BY_NAME.get(child_type if isinstance(child_type, str) else getattr(child_type, "__name__", ""))
        child = node._get_node(key)
        if child_schema is not None and isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, child_schema, dotted + ".")


def load_config_file(path: "str | os.PathLike[str]", what: str = "config file") -> DictConfig:
    """Read a saved YAML config (--config-file, a checkpoint's config.yaml): a missing file, broken YAML
    or a file that is not a mapping is one ConfigError naming the file, never a parser traceback."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} {file} does not exist (or is not a file)")
    try:
        loaded = OmegaConf.load(file)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {file} is not valid YAML{where}: {problem}; fix or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {file} cannot be read: {err}") from None
    except Exception as err:  # omegaconf rejects some valid YAML (e.g. non-string keys)
        raise ConfigError(f"{what} {file} is not a valid config: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{what} {file} holds a YAML list, not a mapping of config keys; "
                          f"pass a config.yaml written by eurotron (e.g. <run_dir>/config.yaml)")
    return loaded


def to_object(cfg: DictConfig | Any, schema: type = TrainConfig) -> Any:
    """Turn a composed DictConfig into typed dataclasses (merging onto the schema first)."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, DictConfig):
        _reject_unknown_keys(cfg, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required but not set; pass {err.full_key}=<value>") from None
    except OmegaConfBaseException as err:  # a saved file bypasses Hydra's checks: wrong types, bad interpolations
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {message}" if key else message) from None
