"""A resumed run against its checkpoint (issue 12): a different model is refused with every differing key;
optimizer and schedule changes apply from the resumed step on, printed and recorded in metrics.jsonl."""

import json
from pathlib import Path

import pytest

from eurotron.compose import compose_train
from eurotron.config import ConfigError, ModelConfig
from eurotron.errors import UserError
from eurotron.train.checkpoint import latest_checkpoint
from eurotron.train.metrics import read_metrics
from eurotron.train.resume_config import check_checkpoint_keys
from eurotron.train.schedule import lr_multiplier
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

from small_run import SMALL_MODEL, prepare_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("data") / "demo")


def overrides(dataset: Path, run_dir: Path, *extra: str):
    return ["experiment=demo", "parallel=single", f"data.path={dataset}", f"run_dir={run_dir}", "data.seq_len=64",
            "data.global_batch_size=4", "data.micro_batch_size=2", "train.steps=8", "scheduler.warmup_steps=2",
            "checkpoint.every=4", "eval.every=0", "logging.plot_loss_curve=false", *SMALL_MODEL, *extra]


def trainer_for(args) -> Trainer:
    cfg, yaml_text = compose_train(args)
    validate_train_config(cfg, world_size=1)
    return Trainer(cfg, yaml_text)


@pytest.fixture(scope="module")
def half_run(dataset, tmp_path_factory) -> Path:
    """A run stopped after its step-4 checkpoint; tests copy it before resuming."""
    run_dir = tmp_path_factory.mktemp("runs") / "half"
    trainer_for(overrides(dataset, run_dir, "train.stop_after=4")).fit()
    assert latest_checkpoint(run_dir / "checkpoints").name.endswith("4")
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.parametrize("changed,keys", [
    (["model.num_layers=1"], ["model.num_layers=1 here but 2"]),
    (["model.rope_theta=500000", "model.norm_eps=1e-6"], ["model.rope_theta", "model.norm_eps"]),
    (["model.tie_embeddings=true"], ["model.tie_embeddings=True here but False"]),
    (["model.sliding_window=8"], ["model.sliding_window=8 here but 0"]),  # the attention pattern changes
    (["model.hidden_size=128", "model.ffn_hidden_size=352"], ["model.hidden_size", "model.ffn_hidden_size",
                                                             "model.head_dim"]),
])
def test_resume_refuses_another_model_naming_every_key(dataset, half_run, tmp_path, changed, keys):
    run_dir = copy_of(half_run, tmp_path)
    before = (run_dir / "metrics.jsonl").read_text()
    config_before = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        trainer_for(overrides(dataset, run_dir, *changed)).fit()
    for key in keys:
        assert key in str(err.value)
    assert "cannot resume" in str(err.value)
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing trained
    assert (run_dir / "config.yaml").read_text() == config_before  # still the config that trained it


def test_optimizer_and_schedule_changes_apply_from_the_resumed_step(dataset, half_run, tmp_path, capsys):
    run_dir = copy_of(half_run, tmp_path)
    trainer = trainer_for(overrides(dataset, run_dir, "optim.lr=0.01", "optim.beta2=0.99", "optim.weight_decay=0.0",
                                    "scheduler=constant", "train.steps=6"))
    trainer.fit()
    printed = capsys.readouterr().out
    assert "changed on resume, applied from step 4: optim.lr: " in printed
    assert "changed on resume, applied from step 4: train.steps: 8 -> 6" in printed
    records = read_metrics(run_dir / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "resume_config_change"]
    assert len(events) == 1 and events[0]["step"] == 4
    changes = events[0]["changes"]
    assert changes["optim.lr"]["to"] == 0.01 and changes["scheduler.name"] == {"from": "cosine", "to": "constant"}
    assert changes["train.steps"] == {"from": 8, "to": 6}
    by_step = {r["step"]: r for r in records if "event" not in r}
    assert sorted(by_step) == [1, 2, 3, 4, 5, 6]
    assert by_step[5]["lr"] == pytest.approx(0.01)  # constant after warmup: the new lr, not the restored schedule's
    for group in trainer.optimizer.param_groups:
        assert group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.0
    assert "lr: 0.01" in (run_dir / "config.yaml").read_text()


def test_unchanged_resume_records_no_change(dataset, half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    trainer_for(overrides(dataset, run_dir, "train.stop_after=1")).fit()
    assert not [r for r in read_metrics(run_dir / "metrics.jsonl") if "event" in r]


def test_a_broken_checkpoint_config_is_one_clear_error(dataset, half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    (ckpt / "config.yaml").write_text("model: {num_layers: 2\n")
    with pytest.raises(UserError, match="config.yaml is truncated"):  # the checksums catch it first
        trainer_for(overrides(dataset, run_dir)).fit()
    (ckpt / "checksums.json").unlink()  # a checkpoint from before checksums: the YAML reader names it
    with pytest.raises(ConfigError, match="config.yaml is not valid YAML at line 2"):
        trainer_for(overrides(dataset, run_dir)).fit()


def test_checkpoint_keys_must_match_the_model_exactly(tmp_path):
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=64)
    from eurotron.model import build_model

    keys = [f"model.{k}" for k in build_model(cfg, device="meta").state_dict()] + ["optim.state.x"]
    check_checkpoint_keys(keys, cfg, tmp_path)
    with pytest.raises(ConfigError, match="has no place for"):
        check_checkpoint_keys(keys + ["model.layers.2.ffn_norm.weight"], cfg, tmp_path)
    with pytest.raises(ConfigError, match="missing 1 tensor"):
        check_checkpoint_keys([k for k in keys if k != "model.norm.weight"], cfg, tmp_path)
