"""Continued pre-training: HF model -> from-hf -> eurotron-train train.init_from=... -> to-hf."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convert_support import VOCAB, random_hf_model, read_safetensors_dir, small_config
from eurotron.compose import compose_prepare, compose_train
from eurotron.config import ConfigError
from eurotron.convert import convert_from_hf, convert_to_hf
from eurotron.data.prepare import prepare
from eurotron.generation import load_model_from_checkpoint
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

LR = 1e-6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demo"
    prepare(compose_prepare([f"output_dir={out}", f"tokenizer.vocab_size={VOCAB}"]))
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    hf = random_hf_model(small_config("apertus"), seed=11)
    hf.save_pretrained(root / "Apertus-Tiny")
    result = convert_from_hf(root / "Apertus-Tiny", root / "ckpt", progress=False)
    return root / "Apertus-Tiny", result


def _overrides(dataset: Path, run: Path, imported_result, *extra: str):
    configs = (imported_result.ckpt_dir / "configs").resolve()
    return [
        "experiment=demo", "parallel=single", f"hydra.searchpath=[file://{configs}]", f"model={imported_result.model_name}",
        f"data.path={dataset}", f"run_dir={run}", "data.seq_len=32", "data.global_batch_size=2",
        "data.micro_batch_size=2", "train.steps=1", "scheduler.warmup_steps=0", f"optim.lr={LR}", "eval.every=0",
        "checkpoint.every=1", "logging.plot_loss_curve=false", *extra,
    ]


def _trainer(overrides) -> Trainer:
    cfg, yaml_text = compose_train(overrides)
    validate_train_config(cfg, world_size=1)
    return Trainer(cfg, yaml_text)


def test_train_init_from_an_imported_model(dataset, imported, tmp_path, capsys):
    hf_dir, result = imported
    assert result.model_name == "apertus_tiny" and result.model_config_file.is_file()
    trainer = _trainer(_overrides(dataset, tmp_path / "run", result, f"train.init_from={result.ckpt_dir}"))
    first = trainer.fit()
    assert "initialised model weights from" in capsys.readouterr().out

    # The first step's loss is the imported model's loss on the first batch, not the random init's.
    reference = _trainer(_overrides(dataset, tmp_path / "ref", result))
    random_init_loss = _trainer(_overrides(dataset, tmp_path / "rnd", result)).train_step()["loss"]
    imported_model, _, _ = load_model_from_checkpoint(result.ckpt_dir)
    reference.model.load_state_dict(imported_model.state_dict())
    assert first["loss"] == pytest.approx(reference.train_step()["loss"], rel=1e-6)
    assert abs(first["loss"] - random_init_loss) > 1e-3

    # After one AdamW step at lr=1e-6 the trained weights are the imported ones, moved by at most ~lr.
    convert_to_hf(tmp_path / "run", tmp_path / "hf_out", dtype="fp32", progress=False)
    original, trained = read_safetensors_dir(hf_dir), read_safetensors_dir(tmp_path / "hf_out")
    assert sorted(original) == sorted(trained)
    assert max((trained[k] - original[k]).abs().max().item() for k in original) <= 2 * LR

    # The model card summarises the prepare run's report.json of the dataset the run trained on.
    card = (tmp_path / "hf_out" / "README.md").read_text()
    assert "Optimizer steps: 1" in card and "Summary of the data pipeline's report" in card
    assert "removed by filters" in card and (tmp_path / "hf_out" / "data_report.json").is_file()

    # A resumed run ignores init_from: `latest` wins.
    again = _trainer(_overrides(dataset, tmp_path / "run", result, f"train.init_from={result.ckpt_dir}",
                                "train.steps=2"))
    again.fit()
    out = capsys.readouterr().out
    assert again.step == 2 and "resumed from" in out and "initialised model weights" not in out


def test_init_from_refuses_a_different_model(dataset, imported, tmp_path):
    _, result = imported
    overrides = [o for o in _overrides(dataset, tmp_path / "run", result) if not o.startswith("model=")]
    trainer = _trainer([*overrides, "model.vocab_size=512", "model.hidden_size=64", "model.num_heads=4",
                        "model.num_kv_heads=2", "model.num_layers=2", "model.ffn_hidden_size=64",
                        f"train.init_from={result.ckpt_dir}"])
    with pytest.raises(ConfigError, match=r"model.ffn_hidden_size=64 here but 96 there"):
        trainer.fit()
