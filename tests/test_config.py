"""The config tree composes, and bad configs fail early with a message naming the key."""

import subprocess
import sys

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from eurotron.compose import compose_train
from eurotron.config import ConfigError, TrainConfig
from eurotron.validation import validate_train_config

DEMO = ["experiment=demo", "parallel=single"]


def test_demo_experiment_composes_and_validates():
    cfg, yaml_text = compose_train(DEMO)
    assert isinstance(cfg, TrainConfig)
    assert cfg.name == "demo" and cfg.run_dir == "runs/demo"
    assert cfg.model.name == "tiny" and cfg.train.steps == 300
    assert "run_dir: runs/demo" in yaml_text  # interpolations resolved in the stored copy
    validate_train_config(cfg, world_size=1)


@pytest.mark.parametrize("model", ["tiny", "llama2_7b", "llama3_8b", "mistral_7b", "llama3_70b", "apertus_8b", "apertus_70b"])
def test_every_model_config_composes(model):
    cfg, _ = compose_train([f"model={model}", "data.seq_len=256"])
    validate_train_config(cfg)
    assert cfg.model.name == model


# Composition errors: the schema rejects unknown keys and wrong types before anything runs.
COMPOSITION_ERRORS = [
    (["model.hiden_size=512"], "hiden_size"),
    (["+model.hiden_size=512"], "hiden_size"),
    (["optim.learning_rate=1e-3"], "learning_rate"),
    (["model.num_layers=four"], "num_layers"),
    (["optim.lr=fast"], "lr"),
    (["parallel.tp=1.5"], "tp"),
    (["model.qk_norm=maybe"], "qk_norm"),
    (["model=llama4_400b"], "llama4_400b"),
]


@pytest.mark.parametrize("overrides,key", COMPOSITION_ERRORS)
def test_schema_rejects_bad_keys_and_types(overrides, key):
    with pytest.raises((HydraException, OmegaConfBaseException, ValueError)) as err:
        compose_train(DEMO + overrides)
    assert key in str(err.value)


# Semantic errors: validation names the key, the value and a fix.
SEMANTIC_ERRORS = [
    (["model.num_kv_heads=3"], "model.num_kv_heads=3", "divide"),
    (["model.hidden_size=250"], "model.hidden_size=250", "divisible"),
    (["model.head_dim=33"], "model.head_dim=33", "even"),
    (["data.seq_len=4096"], "data.seq_len=4096", "max_seq_len"),
    (["data.global_batch_size=10"], "data.global_batch_size=10", "multiple"),
    (["parallel.tp=3"], "parallel.tp=3", "divide"),
    (["parallel.pp=8"], "parallel.pp=8", "num_layers"),
    (["parallel.pp=2", "parallel.pp_layers_per_stage=[1,2]"], "parallel.pp_layers_per_stage", "sum"),
    (["parallel.dp_engine=ddp", "parallel.dp_shard=2"], "parallel.dp_shard=2", "dp_replicate"),
    (["parallel.sequence_parallel=true"], "parallel.sequence_parallel", "tp"),
    (["parallel.pp_schedule=zero_bubble_magic"], "parallel.pp_schedule", "one of"),
    (["loss.name=focal"], "loss.name='focal'", "one of"),
    (["loss.name=goldfish", "loss.k=0"], "loss.k=0", ">= 2"),
    (["scheduler.warmup_steps=1000"], "scheduler.warmup_steps=1000", "train.steps"),
    (["scheduler.name=linear"], "scheduler.name='linear'", "one of"),
    (["optim.beta2=1.5"], "optim.beta2=1.5", "[0, 1)"),
    (["optim.lr=-0.1"], "optim.lr=-0.1", "positive"),
    (["train.precision=fp8"], "train.precision='fp8'", "one of"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last=0", "positive"),
    (["generate.top_p=0"], "generate.top_p=0", "(0, 1]"),
    (["generate.repetition_penalty=0"], "generate.repetition_penalty=0", "positive"),
    (["model.mlp=geglu"], "model.mlp='geglu'", "one of"),
    (["model.rope_scaling.type=yarn"], "model.rope_scaling.type='yarn'", "one of"),
    (["data.path="], "data.path", "eurotron-prepare"),
    (["cluster.cpu_matmul=mkl"], "cluster.cpu_matmul='mkl'", "one of"),
    (["cluster.collective_timeout_minutes=0"], "cluster.collective_timeout_minutes=0", "positive"),
]


@pytest.mark.parametrize("overrides,key,fix", SEMANTIC_ERRORS)
def test_validation_names_key_and_fix(overrides, key, fix):
    cfg, _ = compose_train(DEMO + overrides)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=1)
    message = str(err.value)
    assert key in message and fix in message, message


def test_required_value_left_unset_is_named():
    with pytest.raises(ConfigError, match="data.path is required"):
        compose_train(["data=custom"])


def test_all_problems_reported_at_once():
    cfg, _ = compose_train(DEMO + ["model.num_kv_heads=3", "optim.lr=-1"])
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    assert "model.num_kv_heads" in str(err.value) and "optim.lr" in str(err.value)


def test_world_size_must_match_mesh():
    cfg, _ = compose_train(DEMO + ["parallel.tp=2", "parallel.dp_shard=2", "data.global_batch_size=16"])
    validate_train_config(cfg, world_size=4)
    with pytest.raises(ConfigError, match="needs pp\\*dp_replicate\\*dp_shard\\*tp=4 processes but 8"):
        validate_train_config(cfg, world_size=8)


def test_cli_reports_bad_config_without_traceback(tmp_path, bin_dir):
    result = subprocess.run(
        [str(bin_dir / "eurotron-train"), "experiment=demo", "parallel=single", "model.num_kv_heads=3", f"run_dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "model.num_kv_heads=3" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
