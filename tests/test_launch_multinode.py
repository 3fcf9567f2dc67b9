"""eurotron-launch on a real two-node Slurm: `scripts/slurm_local.sh start --nodes 2` (nodes et-n1, et-n2,
each its own network namespace, hostname and address), cluster=local_2nodes (2 CPU ranks per node).

The demo as 2 nodes x 2 ranks (TP2 inside a node, PP2 across the nodes) under srun (one task per rank);
the same run under torchrun (one task per node, c10d rendezvous on et-n1) with a USR2 preemption and a
requeue, ending bitwise equal to the srun run; a two-point sweep whose jobs each span both nodes; node 2's
ranks killed (the job ends at once, naming the failure); and node 2's ranks frozen mid-run: the job ends
within the timeouts naming the failure, and the next job of the chain resumes from the last complete
checkpoint with the same losses.

Skipped, loudly, only when the two-node cluster is not running (.ci/run starts it).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eurotron.train.metrics import read_metrics

from launch_support import REPO, SMALL_MODEL, launch_cli, prepare_dataset
from test_launch_slurm import DONE_STATES, job_info, log_text, submitted_ids, wait_for

BIN = Path(sys.executable).parent
SCRIPT = REPO / "scripts" / "slurm_local.sh"
TRAIN = ["cluster=local_2nodes", "experiment=demo", "scheduler.warmup_steps=2", "eval.every=0",
         "logging.plot_loss_curve=false", "data.seq_len=64", "data.global_batch_size=4", "data.micro_batch_size=2",
         *SMALL_MODEL]
# experiment=demo is TP2 x PP2: 4 ranks = 2 nodes x 2 ranks.
STEPS = ["train.steps=20", "checkpoint.every=4"]
STEP_COUNT = 20


@pytest.fixture(scope="module")
def slurm2():
    env = {**os.environ, "EUROTRON_SLURM_DIR": os.environ.get("EUROTRON_SLURM2_DIR", "/tmp/eurotron-slurm2")}
    up = subprocess.run([str(SCRIPT), "status", "--nodes", "2"], env=env, capture_output=True).returncode == 0
    if not up:
        pytest.skip("THE TWO-NODE SLURM IS NOT RUNNING: the multi-node launcher tests did not run. Start it "
                    "with `scripts/slurm_local.sh start --nodes 2` (root; .ci/run does) and rerun")
    conf = Path(env["EUROTRON_SLURM_DIR"]) / "slurm.conf"
    return {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("slurm2_data") / "demo")


def launch(args, env, cwd):
    done = launch_cli(args, env, cwd)
    assert done.returncode == 0, done.stderr
    return submitted_ids(done.stdout)


def losses(run_dir: Path):
    """The last record of every step (a resumed run appends the steps it recomputes)."""
    by_step = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r}
    return [by_step[s] for s in sorted(by_step)]


def wait_for_steps(run_dir: Path, job_id: str, env, count: int) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= count):
        assert time.time() < deadline, f"no training steps: {job_info(job_id, env)}"
        assert job_info(job_id, env).get("JobState") not in DONE_STATES, log_text(run_dir)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def srun_run(slurm2, dataset, tmp_path_factory):
    """The uninterrupted reference: srun, one task per rank, 2 per node."""
    tmp = tmp_path_factory.mktemp("slurm2_srun")
    run_dir = tmp / "demo"
    (job_id,) = launch([*TRAIN, *STEPS, f"data.path={dataset}", f"run_dir={run_dir}"], slurm2, tmp)
    return run_dir, job_id, wait_for(job_id, slurm2)


def test_demo_runs_tp_inside_a_node_and_pp_across_the_two_nodes_under_srun(srun_run):
    run_dir, job_id, info = srun_run
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert info["NodeList"] == "et-n[1-2]" and info["NumNodes"] == "2" and info["NumTasks"] == "4", info
    assert "layout: pp=2 x dp_replicate=1 x dp_shard=1 x tp=2 = 4 rank(s)" in log
    # Ranks 0,1 (a TP group, pipeline stage 0) on et-n1; ranks 2,3 (stage 1) on et-n2.
    assert ("nodes: 2 (et-n1: ranks 0,1; et-n2: ranks 2,3); tp groups inside one node each, "
            "pp ranks on et-n1 | et-n2") in log, log
    assert re.search(r"start-up: [\d.]+ s from job start to the end of the first step: launch [\d.]+ s, "
                     r"imports [\d.]+ s, rendezvous [\d.]+ s, mesh [\d.]+ s, data open [\d.]+ s, model build", log), log
    goodput = json.loads((run_dir / "goodput.json").read_text())
    assert goodput["attempts"][0]["startup_parts"]["nodes"] == "2"
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, STEP_COUNT + 1))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEP_COUNT:08d}"


def test_torchrun_per_node_preempted_requeues_across_both_nodes_with_the_same_losses(slurm2, dataset, srun_run,
                                                                                   tmp_path):
    reference, _, _ = srun_run
    run_dir = tmp_path / "preempted"
    (job_id,) = launch([*TRAIN, *STEPS, "cluster.launcher.pattern=torchrun", f"data.path={dataset}",
                        f"run_dir={run_dir}"], slurm2, tmp_path)
    wait_for_steps(run_dir, job_id, slurm2, 3)
    # What Slurm does signal_seconds before the time limit: USR2 to the batch shell (on et-n1 only).
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], env=slurm2, check=True)
    info = wait_for(job_id, slurm2, timeout=300)
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert info["Restarts"] == "1" and info["NodeList"] == "et-n[1-2]", log
    assert "--rdzv-endpoint" in (run_dir / "job.sbatch").read_text()
    stopped = int(re.search(r"stopping at step (\d+)", log).group(1))
    assert 2 <= stopped < STEP_COUNT, log
    assert f"requeueing Slurm job {job_id}" in log
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped:08d}'} at step {stopped}" in log
    assert f"eurotron: job {job_id} (restart 1)" in log
    # Bitwise: same layout and data stream, whichever launcher started the ranks and however often.
    assert losses(run_dir) == losses(reference)


def test_sweep_of_two_points_each_on_both_nodes(slurm2, dataset, tmp_path):
    """One rank and one core per node: both points (FSDP across the two nodes) run at the same time."""
    sweep_dir = tmp_path / "sweep"
    done = launch_cli(["-m", *TRAIN, f"data.path={dataset}", "name=lr_sweep", f"hydra.sweep.dir={sweep_dir}",
                       "cluster.launcher.pattern=torchrun", "cluster.launcher.ranks_per_node=1",
                       "cluster.cpus_per_node=1", "parallel=single", "parallel.dp_shard=2", "train.steps=3",
                       "checkpoint.every=0", "optim.lr=1e-3,3e-3"], slurm2, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(summary) == 2
    lrs = []
    for point in summary:
        (job_id,) = point["job_ids"]
        run_dir = Path(point["run_dir"])
        info = wait_for(job_id, slurm2)
        log = log_text(run_dir)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
        assert info["NodeList"] == "et-n[1-2]", info
        assert "dp_shard=2 x tp=1 = 2 rank(s)" in log and "nodes: 2 (et-n1: ranks 0; et-n2: ranks 1)" in log, log
        records = read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in records] == [1, 2, 3]
        lrs.append(records[1]["lr"])
    assert lrs[1] == pytest.approx(3 * lrs[0])


def node_ranks(node: str):
    """PIDs of the training processes inside a node's network namespace."""
    out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True, check=True).stdout
    pids = []
    for pid in out.split():
        try:
            if b"eurotron-train" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_a_frozen_node_ends_the_job_within_the_collective_timeout_and_the_chain_resumes(slurm2, dataset, srun_run,
                                                                                       tmp_path):
    reference, _, _ = srun_run
    run_dir = tmp_path / "node_failure"
    # Gloo's pipeline receives wait without a timeout (torch's p2p work.wait()), so a frozen stage is ended
    # by the hang watchdog (train.hang_timeout_s); every other collective by the collective timeout.
    first, second = launch([*TRAIN, *STEPS, "cluster.collective_timeout_minutes=0.25", "train.hang_timeout_s=30",
                            "launch.chain=2",
                            f"data.path={dataset}", f"run_dir={run_dir}"], slurm2, tmp_path)
    wait_for_steps(run_dir, first, slurm2, 6)
    # Node 2 stops answering (a hung node: its ranks frozen, its sockets open, so nothing fails fast).
    frozen = node_ranks("et-n2")
    assert len(frozen) == 2, frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    frozen_at = time.time()
    info = wait_for(first, slurm2, timeout=120)
    ended_after = time.time() - frozen_at
    log = log_text(run_dir)
    assert info["JobState"] == "FAILED", log
    # At most 30 s of hang allowance, then srun ends the step (Slurm's SIGCONT/TERM/KILL to the frozen ranks).
    assert ended_after < 30 + 45, (ended_after, log)
    named = (r"eurotron: collective failure on rank [01] \(et-n1\) after step \d+: .* a peer rank or node died or "
             r"stopped answering", r"eurotron: hang: step \d+ \(train.hang_timeout_s=30 s\) has run longer than 30 s "
             r"on rank [01] \(et-n1\); a peer rank or node may have died or frozen")
    assert any(re.search(pattern, log) for pattern in named), log
    info = wait_for(second, slurm2, timeout=240)
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    resumed = int(re.search(r"resumed from \S+step_(\d+) at step (\d+)", log).group(1))
    assert resumed >= 4 and resumed % 4 == 0, log
    # The loss curve continues exactly: every step's last record equals the uninterrupted run's.
    assert losses(run_dir) == losses(reference)


def test_killed_ranks_on_one_node_end_the_job_at_once_naming_the_failure(slurm2, dataset, tmp_path):
    """A node that dies (its ranks killed): the survivors' next collective fails with the peer gone and
    srun (--kill-on-bad-exit) ends the job within seconds, not after a timeout."""
    run_dir = tmp_path / "killed"
    (job_id,) = launch([*TRAIN, *STEPS, f"data.path={dataset}", f"run_dir={run_dir}"], slurm2, tmp_path)
    wait_for_steps(run_dir, job_id, slurm2, 4)
    killed = node_ranks("et-n2")
    assert len(killed) == 2, killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    info = wait_for(job_id, slurm2, timeout=60)
    log = log_text(run_dir)
    assert info["JobState"] == "FAILED" and time.time() - killed_at < 30, log
    assert re.search(r"srun: error: et-n2: tasks? 2(-3)?: Killed", log), log
    assert re.search(r"eurotron: collective failure on rank [01] \(et-n1\) after step \d+: .*Connection (closed|reset) "
                     r"by peer", log), log
