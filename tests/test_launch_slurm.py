"""eurotron-launch on a real Slurm: this machine's own single-node cluster (scripts/slurm_local.sh).

A multi-rank TP x PP job trains, checkpoints and exits 0; a sweep of 2 points (FSDP over 2 ranks under
torchrun) runs both jobs; a chain of 2 jobs continues from the first one's checkpoint; a job that gets
its time-limit signal mid-run checkpoints, requeues itself and ends with the same loss as the
uninterrupted job. Skipped only where Slurm is not installed (CI installs it: .ci/run).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eurotron.train.metrics import read_metrics

from launch_support import REPO, SMALL_MODEL, launch_cli, prepare_dataset

BIN = Path(sys.executable).parent
# Tiny model and batch; 4 ranks = TP2 x PP2 (2 micro-batches per step for the pipeline).
TRAIN = ["cluster=local", "experiment=demo", "scheduler.warmup_steps=2", "eval.every=0",
         "logging.plot_loss_curve=false", "data.seq_len=64", "data.global_batch_size=4", "data.micro_batch_size=2",
         *SMALL_MODEL]
# No parallel override: experiment=demo itself asks for TP2 x PP2 (the literal README command).
FOUR_RANKS = ["train.steps=20", "checkpoint.every=10"]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
               "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (no sbatch on PATH): `scripts/slurm_local.sh install` as root, "
                    "or run .ci/run, to run the real-Slurm launcher tests")
    script = REPO / "scripts" / "slurm_local.sh"
    was_up = subprocess.run([str(script), "status"], capture_output=True).returncode == 0
    done = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"Slurm is installed but the local cluster did not start:\n{done.stderr}"
    conf = re.search(r"export SLURM_CONF=(\S+)", done.stdout).group(1)
    env = {**os.environ, "SLURM_CONF": conf, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    yield env
    if not was_up:
        subprocess.run([str(script), "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("slurm_data") / "demo")


def job_info(job_id: str, env) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job_id: str, env, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job_id, env)
        if info.get("JobState") in DONE_STATES:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], env=env)
    raise AssertionError(f"job {job_id} did not end within {timeout} s: {job_info(job_id, env)}")


def submitted_ids(stdout: str):
    match = re.search(r"submitted job ([\d, ]+)", stdout)
    assert match, stdout
    return [j.strip() for j in match.group(1).split(",")]


def log_text(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "logs").glob("*.out")))


def final_loss(run_dir: Path) -> float:
    return read_metrics(run_dir / "metrics.jsonl")[-1]["loss"]


@pytest.fixture(scope="module")
def demo_run(slurm, dataset, tmp_path_factory):
    """eurotron-launch cluster=local experiment=demo with 4 ranks (TP2 x PP2): the uninterrupted run."""
    tmp = tmp_path_factory.mktemp("slurm_demo")
    run_dir = tmp / "demo"
    done = launch_cli([*TRAIN, *FOUR_RANKS, f"data.path={dataset}", f"run_dir={run_dir}"], slurm, tmp)
    assert done.returncode == 0, done.stderr
    (job_id,) = submitted_ids(done.stdout)
    return run_dir, job_id, wait_for(job_id, slurm)


def test_demo_job_trains_with_four_ranks_checkpoints_and_exits_0(demo_run):
    run_dir, job_id, info = demo_run
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert "layout: pp=2 x dp_replicate=1 x dp_shard=1 x tp=2 = 4 rank(s)" in log
    assert f"eurotron: job {job_id} (restart 0)" in log and "training step ended with status 0" in log
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, 21))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000010", "step_00000020"]
    assert info["NumTasks"] == "4"


def test_preempted_job_checkpoints_requeues_and_ends_with_the_same_loss(slurm, dataset, demo_run, tmp_path):
    reference, _, _ = demo_run
    run_dir = tmp_path / "preempted"
    done = launch_cli([*TRAIN, *FOUR_RANKS, f"data.path={dataset}", f"run_dir={run_dir}"], slurm, tmp_path)
    assert done.returncode == 0, done.stderr
    (job_id,) = submitted_ids(done.stdout)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert time.time() < deadline, f"no training steps: {job_info(job_id, slurm)}"
        assert job_info(job_id, slurm).get("JobState") not in DONE_STATES, log_text(run_dir)
        time.sleep(0.1)
    # What Slurm does signal_seconds before the time limit (--signal=B:USR2@...): USR2 to the batch shell.
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], env=slurm, check=True)
    info = wait_for(job_id, slurm)
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert info["Restarts"] == "1", log
    stopped = int(re.search(r"stopping at step (\d+)", log).group(1))
    assert 2 <= stopped < 20, log
    assert f"requeueing Slurm job {job_id}" in log
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped:08d}'} at step {stopped}" in log
    assert f"eurotron: job {job_id} (restart 1)" in log
    steps = [r["step"] for r in read_metrics(metrics)]
    assert steps == list(range(1, 21))
    assert final_loss(run_dir) == final_loss(reference)  # bitwise: same layout, same data stream
    assert [r["loss"] for r in read_metrics(metrics)] == [r["loss"] for r in read_metrics(reference / "metrics.jsonl")]


def test_sweep_of_two_points_runs_both_jobs(slurm, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = launch_cli(["-m", *TRAIN, f"data.path={dataset}", "name=lr_sweep", f"hydra.sweep.dir={sweep_dir}",
                       "cluster.launcher.pattern=torchrun", "parallel=single", "parallel.dp_shard=2", "train.steps=3",
                       "checkpoint.every=0", "optim.lr=1e-3,3e-3"], slurm, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(summary) == 2
    lrs = []
    for point in summary:
        (job_id,) = point["job_ids"]
        run_dir = Path(point["run_dir"])
        info = wait_for(job_id, slurm)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log_text(run_dir)
        assert "dp_shard=2 x tp=1 = 2 rank(s)" in log_text(run_dir)
        records = read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in records] == [1, 2, 3]
        lrs.append(records[1]["lr"])
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert lrs[1] == pytest.approx(3 * lrs[0])


def test_chain_of_two_jobs_continues_from_the_checkpoint(slurm, dataset, tmp_path):
    run_dir = tmp_path / "chain"
    done = launch_cli([*TRAIN, f"data.path={dataset}", f"run_dir={run_dir}", "parallel=single", "train.steps=4", "train.stop_after=2",
                       "checkpoint.every=0", "launch.chain=2"], slurm, tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = submitted_ids(done.stdout)
    assert job_info(second, slurm).get("Dependency", "").startswith(f"afterany:{first}") or \
        job_info(first, slurm).get("JobState") in DONE_STATES
    for job_id in (first, second):
        info = wait_for(job_id, slurm)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log_text(run_dir)
    log = log_text(run_dir)
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in log
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert "#SBATCH --no-requeue" in (run_dir / "job.sbatch").read_text()
