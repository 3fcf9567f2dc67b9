"""Moving a run between systems (launch.continue_run): what may differ from the run's saved config, the
systems.jsonl history, and on the local Slurm a run trained by 4 ranks (TP2 x DP2) on one cluster config
that continues with 2 ranks (PP2) under another and ends like the uninterrupted run; eurotron-status
watches it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eurotron.compose import compose_train
from eurotron.errors import UserError
from eurotron.launch.moving import check_continue
from eurotron.train.metrics import read_metrics
from eurotron.train.resume_config import checkpoint_train_config
from eurotron.train.systems import read_systems, stretches
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

from launch_support import launch_cli, make_fake_sbatch, sbatch_calls
from test_launch_slurm import TRAIN, dataset, log_text, slurm, submitted_ids, wait_for  # noqa: F401 (fixtures)

BASE = ["experiment=demo", "data.path=/data/tokens", "parallel=tp2_dp2", "data.global_batch_size=4",
        "data.micro_batch_size=2"]


def saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A run dir as a first system leaves it: its resolved config and one complete checkpoint."""
    run_dir = tmp_path / "run"
    _, yaml_text = compose_train([*BASE, f"run_dir={run_dir}", *overrides])
    (run_dir / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000004" / "trainer.json").write_text("{}")
    (run_dir / "config.yaml").write_text(yaml_text)
    return run_dir


def moved(run_dir: Path, *overrides: str):
    cfg, _ = compose_train([*BASE, f"run_dir={run_dir}", "launch.continue_run=true", *overrides])
    return check_continue(checkpoint_train_config(run_dir), cfg, run_dir)


def test_a_run_may_move_to_another_system_layout_and_paths(tmp_path):
    run_dir = saved_run(tmp_path)
    ckpt, changes = moved(run_dir, "cluster.name=elsewhere", "parallel=pp2", "data.micro_batch_size=1",
                          "data.path=/scratch/tokens", "cluster.slurm.time=02:00:00", "optim.lr=1e-3", "train.steps=50")
    assert ckpt.name == "step_00000004"
    for change in ("cluster.name: 'local' -> 'elsewhere'", "parallel.pp: 1 -> 2", "parallel.tp: 2 -> 1",
                   "data.micro_batch_size: 2 -> 1", "optim.lr:", "train.steps:", "launch.continue_run: False -> True"):
        assert any(c.startswith(change) for c in changes), (change, changes)


@pytest.mark.parametrize("changed,keys", [
    (["data.seq_len=128"], ["data.seq_len=128 here but 256"]),
    (["data.global_batch_size=8", "data.seed=7"], ["data.global_batch_size=8", "data.seed=7"]),
    (["loss=goldfish"], ["loss.name='goldfish' here but 'standard'"]),
    (["train.seed=1", "optim.name=sgd"], ["train.seed", "optim.name"]),
])
def test_changes_to_the_run_itself_are_refused_naming_every_key(tmp_path, changed, keys):
    run_dir = saved_run(tmp_path)
    with pytest.raises(UserError) as err:
        moved(run_dir, "cluster.name=elsewhere", *changed)
    for key in keys:
        assert key in str(err.value)
    assert "would change, not just move" in str(err.value) and "cluster.name" not in str(err.value)


def test_another_model_is_refused_by_the_resume_rule_and_nothing_to_continue_is_an_error(tmp_path):
    run_dir = saved_run(tmp_path)
    with pytest.raises(UserError, match="model.num_layers=3 here but 4"):
        moved(run_dir, "model.num_layers=3")
    with pytest.raises(UserError, match="needs checkpoint.resume=auto"):
        moved(run_dir, "checkpoint.resume=never")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(UserError, match="holds no complete checkpoint to continue from"):
        moved(empty)


def test_launch_continue_run_submits_overwrites_the_config_and_records_the_move(dataset, tmp_path):
    env = make_fake_sbatch(tmp_path / "fake")
    run_dir = saved_run(tmp_path)
    common = [*BASE, "cluster=local", f"data.path={dataset}", "launch.continue_run=true"]  # the data moved too
    args = [*common, f"run_dir={run_dir}"]
    nothing = launch_cli([*common, f"run_dir={tmp_path / 'none'}"], env, tmp_path)
    assert nothing.returncode == 2 and "holds no run (no config.yaml)" in nothing.stderr
    refused = launch_cli([*args, "parallel=pp2", "data.seq_len=128"], env, tmp_path)
    assert refused.returncode == 2 and "data.seq_len=128 here but 256" in refused.stderr, refused.stderr
    assert not sbatch_calls(tmp_path / "fake")
    done = launch_cli([*args, "parallel=pp2", "cluster.name=elsewhere"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "continuing" in done.stderr and "from step_00000004 on elsewhere (tp=1 pp=2" in done.stderr
    assert "pp: 2" in (run_dir / "config.yaml").read_text()
    (record,) = [json.loads(line) for line in (run_dir / "systems.jsonl").read_text().splitlines()]
    assert record["event"] == "launch" and record["system"] == "elsewhere" and record["world_size"] == 2
    assert record["from_step"] == 4 and record["continued"] is True and record["job_ids"] == ["101"]


# ---------------------------------------------------------------------------------- on the local Slurm
MOVE = [*TRAIN, "train.steps=8", "checkpoint.every=4"]


def reference_losses(dataset: Path, run_dir: Path):
    """The uninterrupted run in one process, same model, data and batch."""
    cfg, yaml_text = compose_train([*MOVE, "parallel=single", f"data.path={dataset}", f"run_dir={run_dir}"])
    validate_train_config(cfg, world_size=1)
    Trainer(cfg, yaml_text).fit()
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r}


def status_json(run_dir: Path, env) -> dict:
    exe = Path(sys.executable).parent / "eurotron-status"
    done = subprocess.run([str(exe), str(run_dir), "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_run_moves_from_four_ranks_on_one_system_to_two_on_another(slurm, dataset, tmp_path):
    run_dir = tmp_path / "moved"
    first = launch_cli([*MOVE, "parallel=tp2_dp2", "train.stop_after=4", f"data.path={dataset}", f"run_dir={run_dir}"],
                       slurm, tmp_path)
    assert first.returncode == 0, first.stderr
    (job1,) = submitted_ids(first.stdout)
    watched = status_json(run_dir, slurm)  # right after submission: queued or running
    assert watched["jobs"][0]["job_id"] == job1 and watched["jobs"][0]["state"] in ("PENDING", "RUNNING", "COMPLETED")
    info = wait_for(job1, slurm)
    assert info["JobState"] == "COMPLETED", log_text(run_dir)

    second = launch_cli([*MOVE, "parallel=pp2", "cluster.name=elsewhere", "launch.continue_run=true",
                         f"data.path={dataset}", f"run_dir={run_dir}"], slurm, tmp_path)
    assert second.returncode == 0, second.stderr
    (job2,) = submitted_ids(second.stdout)
    info = wait_for(job2, slurm)
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED", log
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000004'} at step 4" in log
    assert "layout: pp=2 x dp_replicate=1 x dp_shard=1 x tp=1 = 2 rank(s)" in log

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["tokens_seen"] for r in records] == [4 * 64 * s for s in range(1, 9)]  # the data position continued
    reference = reference_losses(dataset, tmp_path / "reference")
    # Layouts sum in another order: the project's layout bar (tests/test_parallel_dist.py), 1e-5 relative.
    for r in records:
        assert r["loss"] == pytest.approx(reference[r["step"]], rel=1e-5), (r["step"], r["loss"], reference)

    records = read_systems(run_dir)
    launches = [r for r in records if r["event"] == "launch"]
    assert [(r["system"], r["world_size"], r["from_step"], r["continued"]) for r in launches] == [
        ("local", 4, 0, False), ("elsewhere", 2, 4, True)]
    # A line at each checkpoint (steps 4 and 8, "running") and one when each job stopped.
    assert [(r["system"], r["first_step"], r["last_step"], r["ended"]) for r in records if r["event"] == "trained"] == [
        ("local", 1, 4, "running"), ("local", 1, 4, "stopped"), ("elsewhere", 5, 8, "running"),
        ("elsewhere", 5, 8, "finished")]
    assert [(r["system"], r["layout"], r["job_id"], r["first_step"], r["last_step"]) for r in stretches(records)] == [
        ("local", "tp=2 pp=1 dp_replicate=1 dp_shard=2", job1, 1, 4),
        ("elsewhere", "tp=1 pp=2 dp_replicate=1 dp_shard=1", job2, 5, 8)]

    final = status_json(run_dir, slurm)
    assert final["step"] == 8 and final["finished"] and final["checkpoint"] == "step_00000008"
    assert [j["job_id"] for j in final["jobs"]] == [job1, job2]
    # No accounting on the local Slurm: scontrol still remembers the ended jobs (MinJobAge), else says so.
    assert all(j["state"] in ("COMPLETED", "unknown (no accounting)") for j in final["jobs"]), final["jobs"]
