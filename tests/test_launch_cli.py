"""eurotron-launch end to end without a real Slurm (a recording `sbatch`): dry run, validation before
writing, the run directory, chains, sweeps; and eurotron-train --config-file on what it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eurotron.config import TrainConfig, to_object

from launch_support import SMALL_MODEL, launch_cli, make_fake_sbatch, prepare_dataset, sbatch_calls

FAST = ["train.steps=2", "scheduler.warmup_steps=1", "checkpoint.every=0", "eval.every=0",
        "logging.plot_loss_curve=false", "data.seq_len=64", "data.global_batch_size=4", "data.micro_batch_size=2",
        *SMALL_MODEL]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("launch_data") / "demo")


def base_args(dataset: Path, run_dir: Path, *extra: str):
    return ["cluster=local", "experiment=demo", "parallel=single", f"data.path={dataset}", f"run_dir={run_dir}", *FAST, *extra]


def test_dry_run_prints_the_script_and_writes_nothing(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path)
    run_dir = tmp_path / "runs" / "dry"
    done = launch_cli([*base_args(dataset, run_dir), "launch.dry_run=true", "launch.chain=2"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=demo\n")
    assert f"eurotron-train --config-file {run_dir}/config.yaml" in done.stdout
    assert "would write" in done.stderr and "--dependency=afterany:{prev}" in done.stderr
    assert not run_dir.exists() and not (tmp_path / "runs").exists()
    assert sbatch_calls(tmp_path) == []
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("*.log"))


def test_an_invalid_launch_is_refused_before_anything_is_written(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path)
    run_dir = tmp_path / "runs" / "bad"
    done = launch_cli([*base_args(dataset, run_dir), "parallel.tp=3", "cluster.slurm.time=forever"], env, tmp_path)
    assert done.returncode == 2
    assert "eurotron-launch: error:" in done.stderr and "parallel.tp=3" in done.stderr
    assert "cluster.slurm.time='forever'" in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists() and sbatch_calls(tmp_path) == []


def test_submit_writes_the_run_dir_and_chains_jobs_with_afterany(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path)
    run_dir = tmp_path / "runs" / "chain"
    args = base_args(dataset, run_dir, "launch.chain=3")
    done = launch_cli(args, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "submitted job 101, 102, 103 (each after the previous one ends)" in done.stdout
    script = run_dir / "job.sbatch"
    assert sbatch_calls(tmp_path) == [["--parsable", str(script)],
                                      ["--parsable", "--dependency=afterany:101", str(script)],
                                      ["--parsable", "--dependency=afterany:102", str(script)]]
    assert (run_dir / "logs").is_dir()
    assert "#SBATCH --no-requeue" in script.read_text()  # a chain continues in its next job
    record = json.loads((run_dir / "launch.json").read_text())
    assert record[0]["job_ids"] == ["101", "102", "103"]
    saved = to_object(OmegaConf.load(run_dir / "config.yaml"), TrainConfig)
    assert saved.run_dir == str(run_dir) and saved.launch.chain == 3 and saved.data.path == str(dataset)
    # The same config again continues the run; a different one is refused unless forced.
    again = launch_cli(args, env, tmp_path)
    assert again.returncode == 0, again.stderr
    other = launch_cli([*args, "optim.lr=1e-2"], env, tmp_path)
    assert other.returncode == 2 and "already holds a run with a different config" in other.stderr
    forced = launch_cli([*args, "optim.lr=1e-2", "launch.force=true"], env, tmp_path)
    assert forced.returncode == 0, forced.stderr


def test_sweep_submits_one_job_per_point_and_writes_a_summary(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path)
    sweep_dir = tmp_path / "runs" / "lr_sweep"
    done = launch_cli(["-m", "cluster=local", "experiment=demo", f"data.path={dataset}", "name=lr_sweep",
                       f"hydra.sweep.dir={sweep_dir}", *FAST, "optim.lr=1e-3,3e-3"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["job_ids"] for p in summary] == [["101"], ["102"]]
    assert [p["run_dir"] for p in summary] == [str(sweep_dir / "0"), str(sweep_dir / "1")]
    assert [[o for o in p["overrides"] if o.startswith("optim.lr=")] for p in summary] == [["optim.lr=0.001"],
                                                                                         ["optim.lr=0.003"]]
    for point, lr in zip(summary, (1e-3, 3e-3)):
        saved = to_object(OmegaConf.load(Path(point["run_dir"]) / "config.yaml"), TrainConfig)
        assert saved.optim.lr == lr
    assert f"| 0 | 101 | optim.lr=0.001 | {sweep_dir / '0'} |" in (sweep_dir / "sweep.md").read_text()
    assert "sweep of 2 point(s)" in done.stdout


def test_train_runs_the_saved_config_as_is(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path)
    run_dir = tmp_path / "runs" / "saved"
    assert launch_cli(base_args(dataset, run_dir), env, tmp_path).returncode == 0
    saved_text = (run_dir / "config.yaml").read_text()
    train = Path(sys.executable).parent / "eurotron-train"
    env = {**env, "PATH": env["PATH"].split(":", 1)[1]}  # the real commands again
    wrong = subprocess.run([str(train), "--config-file", str(run_dir / "config.yaml"), "optim.lr=1"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "no overrides" in wrong.stderr
    done = subprocess.run([str(train), "--config-file", str(run_dir / "config.yaml")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step      2" in done.stdout
    assert (run_dir / "config.yaml").read_text() == saved_text  # the trainer wrote back the very same file
    assert (run_dir / "checkpoints" / "latest").exists()
    assert not (tmp_path / "outputs").exists()


def test_a_dry_run_sweep_prints_every_point_and_leaves_no_directory(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path)
    sweep_dir = tmp_path / "runs" / "dry_sweep"
    done = launch_cli(["-m", "cluster=local", "experiment=demo", f"data.path={dataset}",
                       f"hydra.sweep.dir={sweep_dir}", *FAST, "optim.lr=1e-3,3e-3", "launch.dry_run=true"],
                      env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/bin/bash\n") == 2
    assert f"eurotron-train --config-file {sweep_dir / '1'}/config.yaml" in done.stdout
    assert "| 1 | (dry run) | optim.lr=0.003 |" in done.stdout
    assert not sweep_dir.exists() and sbatch_calls(tmp_path) == []
