"""checkpoint.export_hf_every: a Hugging Face directory next to the DCP checkpoint during training.

Single process (sync and async saves, pruning, resume catch-up, a failing export) and one 2-process
launch (TP2, async saves): every export loads in transformers with the checkpoint's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from convert_support import random_eurotron_model, run_config_yaml, save_eurotron_checkpoint, small_config
from eurotron.compose import compose_prepare, compose_train
from eurotron.config import ConfigError
from eurotron.data.prepare import prepare
from eurotron.generation import load_model_from_checkpoint
from eurotron.train.checkpoint_integrity import verify_checkpoint
from eurotron.train.hf_export import ERROR_FILE, HF_DIR, HFExporter
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

TESTS = Path(__file__).resolve().parent
MODEL = ["model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.ffn_hidden_size=96", "model.max_seq_len=64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demo"
    prepare(compose_prepare([f"output_dir={out}", "tokenizer.vocab_size=512"]))
    return out


def _overrides(data: Path, run_dir: Path, *extra: str) -> List[str]:
    return ["experiment=demo", "parallel=single", f"data.path={data}", f"run_dir={run_dir}", "data.seq_len=32",
            "data.global_batch_size=4", "data.micro_batch_size=2", "train.steps=4", "scheduler.warmup_steps=0",
            "eval.every=0", "checkpoint.every=2", "checkpoint.export_hf_every=2", "checkpoint.export_hf_dtype=fp32",
            "logging.plot_loss_curve=false", "logging.console=false", *MODEL, *extra]


def _fit(overrides: List[str]) -> None:
    cfg, text = compose_train(overrides)
    validate_train_config(cfg, world_size=1)
    Trainer(cfg, text).fit()


def _assert_export_matches(step_dir: Path) -> None:
    """The export is complete, loads in transformers and computes the checkpoint's logits."""
    from transformers import AutoModelForCausalLM

    out = step_dir / HF_DIR
    assert (out / "config.json").is_file() and not (step_dir / ERROR_FILE).exists()
    assert not list(step_dir.glob(f".{HF_DIR}.tmp-*"))
    verify_checkpoint(step_dir, collective=False)  # the export does not disturb the checkpoint's checksums
    model, _, _ = load_model_from_checkpoint(step_dir)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(input_ids=ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("async_save", [False, True])
def test_export_during_training(async_save, data, tmp_path, capsys):
    run = tmp_path / "run"
    keep = "1" if not async_save else "2"  # keep_last=1: step 2 (and its export) is pruned once step 4 is in
    _fit(_overrides(data, run, f"checkpoint.async_save={str(async_save).lower()}", f"checkpoint.keep_last={keep}"))
    root = run / "checkpoints"
    assert "exported step 4" in capsys.readouterr().out
    _assert_export_matches(root / "step_00000004")
    assert (root / "step_00000002").exists() == async_save
    if async_save:
        _assert_export_matches(root / "step_00000002")
        return
    # A job that ended during its export: the resumed run exports the checkpoint it resumes from.
    import shutil

    shutil.rmtree(root / "step_00000004" / HF_DIR)
    _fit(_overrides(data, run, "checkpoint.keep_last=1"))  # resumes at step 4 = train.steps: no step, one export
    _assert_export_matches(root / "step_00000004")


def test_a_failing_export_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    cfg = small_config("llama")
    step = save_eurotron_checkpoint(random_eurotron_model(cfg), tmp_path / "step_00000004", run_config_yaml(cfg),
                                    None, {"step": 4, "tokens_seen": 0})
    import eurotron.convert.to_hf as to_hf

    def disk_full(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(to_hf, "convert_to_hf", disk_full)
    exporter = HFExporter(every=2, dtype=None)
    exporter.committed(3, step)  # not due: nothing happens
    exporter.join()
    assert not (step / ERROR_FILE).exists()
    exporter.committed(4, step)
    exporter.join()
    message = (step / ERROR_FILE).read_text()
    assert "export of step 4" in message and "No space left on device" in message and "eurotron-convert to-hf" in message
    assert "eurotron: error: Hugging Face export of step 4" in capsys.readouterr().err
    assert not (step / HF_DIR).exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["checkpoint.export_hf_every=-2"], "checkpoint.export_hf_every=-2: must be zero or positive"),
        (["checkpoint.export_hf_every=3"], "checkpoint.export_hf_every=3: must be a multiple of checkpoint.every=2 "
                                           "(an export is made from the checkpoint of its step): use 2 or 4"),
        (["checkpoint.every=0"], "checkpoint.export_hf_every=2: an export is made from a checkpoint and "
                                 "checkpoint.every=0 writes none"),
        (["checkpoint.export_hf_dtype=fp8"], "checkpoint.export_hf_dtype='fp8': must be one of bf16, fp16, fp32"),
        (["model.sliding_window=8"], "checkpoint.export_hf_every=2: this model cannot be exported to Hugging Face "
                                     "format (model.sliding_window=8 cannot be expressed by LlamaForCausalLM"),
        (["model.hf.eos_token_id=end"], "model.hf.eos_token_id='end': must be an integer or a list of integers"),
        (["model.hf.dtype=half"], "model.hf.dtype='half': must be one of bfloat16, float16, float32"),
    ],
    ids=["negative", "not-a-multiple", "no-checkpoints", "dtype", "not-exportable", "hf-eos", "hf-dtype"],
)
def test_validation_names_the_value(extra, message, tmp_path):
    cfg, _ = compose_train(_overrides(tmp_path, tmp_path / "run", *extra))
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=1)
    assert message in str(err.value), str(err.value)


def test_export_under_tensor_parallelism_with_async_saves(data, tmp_path):
    """One 2-process launch (TP2, async saves): rank 0 alone exports, from the sharded checkpoint."""
    run = tmp_path / "tp2"
    spec = tmp_path / "spec.json"
    overrides = _overrides(data, run, "parallel=tp2", "checkpoint.async_save=true", "checkpoint.keep_last=3")
    spec.write_text(json.dumps({"runs": [{"name": "tp2", "overrides": overrides}]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(TESTS / "dist_worker.py"), str(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert done.stdout.count("exported step") == 2  # once per due step: rank 0 only
    for step in (2, 4):
        step_dir = run / "checkpoints" / f"step_{step:08d}"
        assert len(list((step_dir / "model_optim").glob("*.distcp"))) == 2  # written by both ranks
        _assert_export_matches(step_dir)
