"""Preemption without a real Slurm: the trainer's hook (train/preemption.py) and the job script's trap.

The real-Slurm version (signal → checkpoint → requeue → same final loss) is in test_launch_slurm.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eurotron.compose import compose_raw, compose_train
from eurotron.launch.render import render_job
from eurotron.launch.validation import check_launch
from eurotron.train import preemption
from eurotron.train.metrics import read_metrics

from launch_support import SMALL_MODEL, make_fake_slurm, prepare_dataset, read_args

FAST = ["experiment=demo", "parallel=single", "scheduler.warmup_steps=1", "eval.every=0", "logging.plot_loss_curve=false",
        "data.seq_len=64", "data.global_batch_size=4", "data.micro_batch_size=2", *SMALL_MODEL]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("preempt_data") / "demo")


@pytest.fixture
def clean_signals():
    """The trainer installs handlers in this process: put the old ones back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    preemption.reset()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    preemption.reset()
    preemption._state.installed = False


def run_in_process(dataset, run_dir, *extra):
    from eurotron.cli.train import run

    return run(compose_raw("train", [*FAST, f"data.path={dataset}", f"run_dir={run_dir}", *extra]))


@pytest.mark.parametrize("kind,requeued", [("USR2", True), ("TERM", False)])
def test_flag_file_stops_after_the_step_checkpoints_and_requeues_on_the_warning_only(
        kind, requeued, dataset, tmp_path, monkeypatch, clean_signals):
    env = make_fake_slurm(tmp_path)
    flag = tmp_path / "preempt"
    flag.write_text(kind + "\n")
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    monkeypatch.setenv("EUROTRON_PREEMPT_FILE", str(flag))
    monkeypatch.setenv("EUROTRON_REQUEUE", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    run_dir = tmp_path / "run"
    run_in_process(dataset, run_dir, "train.steps=6", "checkpoint.every=4")
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert read_args(tmp_path / "scontrol.args") == (["requeue", "77"] if requeued else [])


def test_without_save_final_the_hook_writes_the_checkpoint_itself(dataset, tmp_path, monkeypatch, clean_signals):
    flag = tmp_path / "preempt"
    flag.write_text("USR2\n")
    monkeypatch.setenv("EUROTRON_PREEMPT_FILE", str(flag))
    monkeypatch.delenv("EUROTRON_REQUEUE", raising=False)
    run_dir = tmp_path / "run"
    run_in_process(dataset, run_dir, "train.steps=6", "checkpoint.every=0", "checkpoint.save_final=false")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert preemption.finish() == "exit"


def test_the_signal_itself_is_caught(tmp_path, clean_signals, monkeypatch):
    monkeypatch.delenv("EUROTRON_PREEMPT_FILE", raising=False)
    preemption.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR2)  # passed on twice (Slurm, then srun or torchrun): still one request

    class FakeTrainer:
        step, device = 3, "cpu"

        class cfg:
            class checkpoint:
                every, save_final = 3, True

        def save_checkpoint(self):
            raise AssertionError("checkpoint.every already saved step 3")

    assert preemption.stop_requested(FakeTrainer())
    assert preemption._state.stopped_at == 3


def test_job_script_traps_the_signal_and_the_trainer_requeues(dataset, tmp_path):
    """The rendered local script, run by bash with stub srun/scontrol and the real eurotron-train:
    USR2 to the batch shell → flag file + signal to the task → checkpoint → scontrol requeue → exit 0."""
    run_dir = tmp_path / "run"
    cfg, yaml_text = compose_train(["cluster=local", *FAST, f"data.path={dataset}", f"run_dir={run_dir}",
                                    "train.steps=40", "checkpoint.every=0", "cluster.launcher.venv=null"])
    job = render_job(cfg, run_dir, tmp_path, check_launch(cfg))
    run_dir.mkdir()
    (run_dir / "job.sbatch").write_text(job.script)
    (run_dir / "config.yaml").write_text(yaml_text)
    env = make_fake_slurm(tmp_path, train_recorder=False)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.Popen(["bash", str(run_dir / "job.sbatch")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "SIGUSR2" in err and "stopping at step" in out
    assert read_args(tmp_path / "scontrol.args")[-2:] == ["requeue", "4242"]
    steps = [r["step"] for r in read_metrics(metrics)]
    assert 2 <= steps[-1] < 40
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{steps[-1]:08d}"
    assert json.loads((run_dir / "checkpoints" / latest / "trainer.json").read_text())["step"] == steps[-1]
    assert not (run_dir / ".preempt-4242").exists()
