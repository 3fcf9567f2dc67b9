"""Checkpoint reliability (issue #12 points 3, 5, 6, 8): retention by step number, no silent fresh start
over an old run, checksums verified on every load with fallback, free space checked before writing,
clear errors for unwritable directories and a missing GPU, and asynchronous saves that stay atomic."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from eurotron.compose import compose_prepare, compose_train
from eurotron.config import ConfigError
from eurotron.data.prepare import prepare
from eurotron.errors import UserError
from eurotron.train.checkpoint import CheckpointError, CorruptCheckpointError, NotEnoughSpaceError, load_checkpoint
from eurotron.train.checkpoint_retention import prune
from eurotron.train.metrics import read_metrics
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

from small_run import SMALL_MODEL, prepare_dataset



@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("data") / "demo")


def overrides(dataset: Path, run_dir: Path, *extra: str):
    return [
        "experiment=demo", "parallel=single", f"data.path={dataset}", f"run_dir={run_dir}", "data.seq_len=64",
        "data.global_batch_size=4", "data.micro_batch_size=2", "train.steps=8", "scheduler.warmup_steps=2",
        "checkpoint.every=4", "eval.every=0", "logging.plot_loss_curve=false", *SMALL_MODEL, *extra,
    ]


def trainer_for(dataset, run_dir, *extra) -> Trainer:
    cfg, yaml_text = compose_train(overrides(dataset, run_dir, *extra))
    validate_train_config(cfg, world_size=1)
    return Trainer(cfg, yaml_text)


def train(dataset, run_dir, *extra) -> Trainer:
    trainer = trainer_for(dataset, run_dir, *extra)
    trainer.fit()
    return trainer


def shard(step_dir: Path) -> Path:
    return sorted((step_dir / "model_optim").glob("*.distcp"))[0]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A finished 8-step run (checkpoints at 4 and 8) that tests copy before damaging."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(dataset, run)
    return run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


# ------------------------------------------------------------------------------------ integrity
def test_random_bytes_in_a_shard_fall_back_to_the_previous_checkpoint(dataset, trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    step8 = run / "checkpoints" / "step_00000008"
    assert json.loads((step8 / "checksums.json").read_text())["algorithm"] == "sha256"
    bad = shard(step8)
    with open(bad, "r+b") as f:  # 64 KB of random bytes: today this resumes silently into NaN
        f.seek(1024)
        f.write(os.urandom(65536))
    with pytest.raises(CorruptCheckpointError, match=bad.name):
        load_checkpoint(step8, trainer_for(dataset, tmp_path / "other").model, None)
    resumed = train(dataset, run, "train.steps=10")
    out = capsys.readouterr()
    assert f"skipping checkpoint step_00000008: {bad}" in out.err and "corrupted" in out.err
    assert "resumed from" in out.out and "step_00000004 at step 4" in out.out
    assert resumed.step == 10
    records = read_metrics(run / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "event" not in r)


def test_truncated_and_missing_files_are_named_by_every_loader(trained, tmp_path, bin_dir):
    from eurotron.convert.to_hf import convert_to_hf
    from eurotron.generation import load_model_from_checkpoint

    run = copy_run(trained, tmp_path)
    step8 = run / "checkpoints" / "step_00000008"
    bad = shard(step8)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 100)
    with pytest.raises(CorruptCheckpointError, match=rf"{bad}.*truncated"):
        load_model_from_checkpoint(run)
    with pytest.raises(CorruptCheckpointError, match=rf"{bad}.*truncated"):
        convert_to_hf(run, tmp_path / "hf", progress=False)
    shutil.copy(trained / "checkpoints" / "step_00000008" / "model_optim" / bad.name, bad)
    (step8 / "rng" / "rank_0.pt").unlink()
    cli = subprocess.run([str(bin_dir / "eurotron-convert"), "to-hf", str(run), str(tmp_path / "hf2")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert "rank_0.pt is missing" in cli.stderr and cli.stderr.count("\n") == 1


def test_all_checkpoints_corrupt_is_one_clear_error(dataset, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    for step in ("step_00000004", "step_00000008"):
        (run / "checkpoints" / step / "trainer.json").write_text('{"step": 0}')
    with pytest.raises(CheckpointError, match="no intact checkpoint.*trainer.json is.*checkpoint.resume=restart"):
        train(dataset, run, "train.steps=10")


def test_checkpoint_without_manifest_still_loads_with_a_warning(trained, tmp_path, capsys):
    from eurotron.generation import load_model_from_checkpoint
    import eurotron.train.checkpoint_integrity as integrity

    run = copy_run(trained, tmp_path)
    (run / "checkpoints" / "step_00000008" / "checksums.json").unlink()
    integrity._warned_no_manifest = False
    load_model_from_checkpoint(run)
    load_model_from_checkpoint(run)
    assert capsys.readouterr().err.count("has no checksums.json") == 1


# ------------------------------------------------------------------------------------ retention
def test_pruning_orders_by_step_number_and_spares_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_00000008", "step_12", "step_00000004", "step_00000100"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer.json").write_text("{}")
    (root / "latest").write_text("step_00000004\n")  # e.g. a user pointed latest back on purpose
    prune(root, keep_last=1)
    # By name, "step_12" sorts last and step_00000100 would go; by number 100 is newest, 4 is latest.
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000004", "step_00000100"]


def test_resume_never_refuses_and_restart_moves_the_old_run(dataset, trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=rf"run_dir={run} already holds checkpoints.*resume=restart"):
        trainer_for(dataset, run, "checkpoint.resume=never")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    train(dataset, run, "checkpoint.resume=restart", "train.steps=4")
    assert "moved the previous run's files to" in capsys.readouterr().out
    (archived,) = (run / "previous").iterdir()
    assert sorted(p.name for p in (archived / "checkpoints").iterdir()) == before
    assert [r["step"] for r in read_metrics(archived / "metrics.jsonl")] == list(range(1, 9))
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]  # never interleaved
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"


def test_a_fresh_start_beside_old_metrics_moves_them_aside(tmp_path):
    from eurotron.train import checkpoint_run_dir

    for mode in ("never", "auto"):  # no checkpoints to resume: both start fresh
        run = tmp_path / mode
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
        moved = checkpoint_run_dir.prepare(run, mode)
        assert not (run / "metrics.jsonl").exists() and (moved / "metrics.jsonl").exists()
        assert moved.parent == run / "previous"


# ------------------------------------------------------------------------------ disk, environment
def test_not_enough_space_keeps_latest_and_leaves_no_tmp(dataset, trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    trainer = trainer_for(dataset, run, "train.steps=12")
    trainer._maybe_resume()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    trainer.step = 12
    with pytest.raises(NotEnoughSpaceError, match=r"not enough space in .*checkpoints: need 0\.\d\d GB, have 0\.01 GB"):
        trainer.save_checkpoint()
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000008"
    assert not list(root.glob(".tmp_*")) and not (root / "step_00000012").exists()


def test_unwritable_directories_are_clear_errors(dataset, tmp_path):
    from eurotron.convert.to_hf import convert_to_hf

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=rf"run_dir={blocker / 'run'} is not a writable directory"):
        trainer_for(dataset, blocker / "run")
    with pytest.raises(UserError, match=rf"output directory={blocker / 'hf'}: {blocker} is not a writable"):
        convert_to_hf(tmp_path / "no_checkpoint", blocker / "hf", progress=False)
    with pytest.raises(UserError, match=rf"output_dir={blocker / 'data'}: {blocker} is not a writable"):
        prepare(compose_prepare([f"output_dir={blocker / 'data'}"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_config_error():
    from eurotron.parallel.env import select_device

    with pytest.raises(ConfigError, match="cluster.device=cuda but no GPU is visible"):
        select_device("cuda", 0)


# ---------------------------------------------------------------------------------- async saves
def test_async_save_commits_only_after_the_background_write(dataset, trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    trainer = trainer_for(dataset, run, "train.steps=12", "checkpoint.async_save=true")
    trainer._maybe_resume()
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    release, real_save = threading.Event(), dcp.save

    def slow_async_save(state, checkpoint_id, process_group=None):  # staged copy, write held back
        staged = {"model": {k: v.clone() for k, v in state["model"].items()}, "optim": state["optim"]}
        from concurrent.futures import ThreadPoolExecutor
        return ThreadPoolExecutor(1).submit(lambda: (release.wait(30), real_save(staged, checkpoint_id=checkpoint_id)))

    monkeypatch.setattr(dcp, "async_save", slow_async_save)
    trainer.step = 12
    trainer.save_checkpoint()
    root = run / "checkpoints"
    with torch.no_grad():  # training goes on while the write is in flight
        for p in trainer.model.parameters():
            p.add_(1.0)
    assert (root / "latest").read_text().strip() == "step_00000008" and not (root / "step_00000012").exists()
    release.set()
    assert trainer.checkpoints.wait() == root / "step_00000012"
    assert (root / "latest").read_text().strip() == "step_00000012"
    assert (root / "step_00000012" / "checksums.json").exists() and not list(root.glob(".tmp_*"))
    fresh = trainer_for(dataset, tmp_path / "fresh")
    load_checkpoint(root / "step_00000012", fresh.model, None)
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_failed_background_write_keeps_latest(dataset, trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    trainer = trainer_for(dataset, run, "train.steps=12", "checkpoint.async_save=true")
    from concurrent.futures import Future

    def crashing_async_save(state, checkpoint_id, process_group=None):
        future = Future()
        future.set_exception(OSError(28, "No space left on device"))
        return future

    monkeypatch.setattr(dcp, "async_save", crashing_async_save)
    trainer.step = 12
    trainer.save_checkpoint()
    with pytest.raises(CheckpointError, match="step_00000012 was not written.*No space left.*still names step_00000008"):
        trainer.checkpoints.wait()
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000008" and not list(root.glob(".tmp_*"))


def test_async_training_run_matches_the_synchronous_one(dataset, trained, tmp_path):
    run = tmp_path / "async"
    train(dataset, run, "checkpoint.async_save=true")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    async_losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert async_losses and async_losses == [r["loss"] for r in read_metrics(trained / "metrics.jsonl")]
    for step in ("step_00000004", "step_00000008"):
        a = json.loads((run / "checkpoints" / step / "checksums.json").read_text())["files"]
        b = json.loads((trained / "checkpoints" / step / "checksums.json").read_text())["files"]
        assert a["model_optim/__0_0.distcp"] == b["model_optim/__0_0.distcp"]  # the same bytes


def test_two_ranks_async_save_corrupt_shard_fallback(dataset, tmp_path):
    """One torchrun launch: TP2 async saves, a corrupt rank-1 shard, both ranks fall back together."""
    spec = tmp_path / "spec.json"
    base = [o for o in overrides(dataset, tmp_path / "unused") if not o.startswith(("run_dir=", "parallel="))]
    spec.write_text(json.dumps({"base": [*base, "parallel=tp2"], "run_dir": str(tmp_path / "run")}))
    worker = Path(__file__).with_name("checkpoint_reliability_worker.py")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=2", str(worker), str(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["latest_after_first"] == "step_00000004" and result["manifest"]
    assert result["steps_after_first"] == ["step_00000002", "step_00000004"]
    assert result["resumed_step"] == 6
    assert f"skipping checkpoint step_00000004" in done.stderr and result["corrupted"] in done.stderr
    assert "step_00000002 at step 2" in done.stdout
