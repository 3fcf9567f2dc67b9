"""Job scripts per system: each system's launch facts are in its rendered script, and bash accepts it."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from eurotron.config import ConfigError
from eurotron.launch.nodes import parse_slurm_time, plan_job
from eurotron.launch.validation import check_launch
from eurotron.launch.render import EDF_NAME, available_templates

from launch_support import SYSTEMS, compose, render, system_overrides

LUMI_MASKS = ["0x00fe000000000000", "0xfe00000000000000", "0x0000000000fe0000", "0x00000000fe000000",
              "0x00000000000000fe", "0x000000000000fe00", "0x000000fe00000000", "0x0000fe0000000000"]


def sbatch_lines(script: str):
    return [line[len("#SBATCH --"):] for line in script.splitlines() if line.startswith("#SBATCH --")]


def srun_args(script: str):
    """The options of the training srun (the multi-line command, joined and split like bash would)."""
    block = script[script.index("\nsrun \\\n"):script.index("eurotron_step_pid=$!")]
    return shlex.split(block.replace("\\\n", " "))


def bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_system_has_a_template_and_a_cluster_config(repo_root):
    assert set(SYSTEMS) <= set(available_templates())
    for system in SYSTEMS:
        assert (repo_root / "configs" / "cluster" / f"{system}.yaml").exists(), system


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_renders_valid_bash_that_trains_the_saved_config(system, tmp_path):
    run_dir = tmp_path / "runs" / "x"
    job = render(system_overrides(system, f"run_dir={run_dir}", "name=x"), run_dir)
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert f"output={run_dir}/logs/%x-%j.out" in lines and "open-mode=append" in lines
    assert "signal=B:USR2@300" in lines
    assert "requeue" in lines
    # The job never re-composes: it trains the config file written next to the script.
    assert f"--config-file {run_dir}/config.yaml" in job.script
    assert 'MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 10000 ))' in job.script
    assert "trap 'eurotron_on_signal USR2' USR2" in job.script


def test_lumi_one_rank_per_gcd_with_cpu_masks_rccl_env_and_node_local_miopen(tmp_path):
    job = render(system_overrides("lumi", "parallel.dp_shard=16"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "ntasks-per-node=8", "cpus-per-task=7", "gpus-per-node=8", "partition=standard-g",
            "account=project_465000001"} <= set(lines)
    srun = srun_args(job.script)
    bind = next(a for a in srun if a.startswith("--cpu-bind="))
    assert bind == "--cpu-bind=mask_cpu:" + ",".join(LUMI_MASKS)
    assert "--ntasks-per-node=8" in srun
    for fact in ('NCCL_SOCKET_IFNAME="hsn0,hsn1,hsn2,hsn3"', 'NCCL_NET_GDR_LEVEL="PHB"', 'FI_CXI_DEFAULT_CQ_SIZE="131072"',
                 'CXI_FORK_SAFE="1"', 'CXI_FORK_SAFE_HP="1"', 'FI_CXI_DISABLE_CQ_HUGETLB="1"',
                 'MIOPEN_USER_DB_PATH="/tmp/${USER}-miopen-${SLURM_NODEID}"',
                 'MIOPEN_CUSTOM_CACHE_DIR="/tmp/${USER}-miopen-${SLURM_NODEID}"',
                 'RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_NTASKS"'):
        assert fact in job.script, fact
    assert "singularity exec /appl/local/laifs/lumi-multitorch.sif" in job.script
    assert "module use /appl/local/laifs/modules\nmodule load lumi-aif-singularity-bindings" in job.script
    assert 'HF_HOME="/flash/project_465000001/eurotron/hf"' in job.script


def test_lumi_torchrun_pattern_takes_the_whole_node_without_masks(tmp_path):
    job = render(system_overrides("lumi", "parallel.dp_shard=16", "cluster.launcher.pattern=torchrun",
                                  "cluster.slurm.cpu_bind=null"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert {"ntasks-per-node=1", "cpus-per-task=56", "gpus-per-node=8"} <= set(lines)
    srun = srun_args(job.script)
    assert "torchrun" in srun and "--nproc-per-node=8" in srun and "--nnodes=2" in srun
    assert "--rdzv-backend=c10d" in srun and "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT" in srun
    assert not any(a.startswith("--cpu-bind") for a in srun)
    assert 'OMP_NUM_THREADS="7"' in job.script
    assert "RANK=\"$SLURM_PROCID\"" not in job.script  # torchrun sets the ranks


def test_alps_container_engine_with_aws_ofi_nccl_hook_and_a_gpu_per_task(tmp_path):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    run_dir = tmp_path / "run"
    job = render(system_overrides("alps", "parallel.dp_shard=8"), run_dir)
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "ntasks-per-node=4", "gpus-per-task=1", "cpus-per-task=72",
            "constraint=thp_never&nvidia_vboost_enabled", "partition=normal"} <= set(lines)
    srun = srun_args(job.script)
    assert f"--environment={run_dir / EDF_NAME}" in srun
    edf = tomllib.loads(job.files[EDF_NAME])
    assert edf["image"] == "/capstor/store/cscs/ngc-pytorch.sqsh"
    assert edf["annotations"]["com"]["hooks"]["aws_ofi_nccl"]["enabled"] == "true"
    assert {"/capstor", "/iopsstor"} <= set(edf["mounts"])
    for fact in ('NCCL_NET="AWS Libfabric"', 'NCCL_CROSS_NIC="1"', 'NCCL_PROTO="^LL128"',
                 'FI_CXI_DEFAULT_TX_SIZE="16384"', 'FI_CXI_RX_MATCH_MODE="software"',
                 'FI_MR_CACHE_MONITOR="userfaultfd"', 'FI_CXI_DISABLE_HOST_REGISTER="1"'):
        assert fact in job.script, fact


def test_alps_with_an_existing_edf_writes_none(tmp_path):
    job = render(system_overrides("alps", "parallel.dp_shard=4", "cluster.container.edf=pytorch-25.01"),
                 tmp_path / "run")
    assert job.files == {}
    assert "--environment=pytorch-25.01" in srun_args(job.script)


def test_jupiter_srun_cpus_per_task_torchrun_per_node_and_ib_address(tmp_path):
    job = render(system_overrides("jupiter", "parallel.dp_shard=8"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    assert 'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"' in job.script
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "ntasks-per-node=1", "cpus-per-task=288", "gpus-per-node=4"} <= set(lines)
    srun = srun_args(job.script)
    assert "--nproc-per-node=4" in srun and "--no-python" in srun
    assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"i' in job.script
    for fact in ('NCCL_IB_TIMEOUT="50"', 'NCCL_IB_RETRY_CNT="10"', 'HF_HUB_OFFLINE="1"', 'OMP_NUM_THREADS="72"'):
        assert fact in job.script, fact


def test_leonardo_gres_qos_modules_and_offline(tmp_path):
    job = render(system_overrides("leonardo", "parallel.dp_shard=8"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"gres=gpu:4", "partition=boost_usr_prod", "qos=normal", "account=abc123", "cpus-per-task=32"} <= set(lines)
    assert "module load profile/deeplrn\nmodule load cineca-ai" in job.script
    assert 'HF_HUB_OFFLINE="1"' in job.script and 'NCCL_IB_HCA="mlx5"' in job.script


def test_marenostrum5_acc_partition_qos_gres_and_srun_cpus(tmp_path):
    job = render(system_overrides("marenostrum5", "parallel.dp_shard=4"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert {"partition=acc", "qos=acc_ehpc", "gres=gpu:4", "cpus-per-task=80", "account=abc123"} <= set(lines)
    assert 'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"' in job.script
    assert 'HF_HUB_OFFLINE="1"' in job.script
    per_gpu = render(system_overrides("marenostrum5", "parallel.dp_shard=4", "cluster.launcher.pattern=srun"),
                     tmp_path / "run2")
    assert {"ntasks-per-node=4", "cpus-per-task=20"} <= set(sbatch_lines(per_gpu.script))


def test_meluxina_nomultithread_core_binding_and_ib0(tmp_path):
    job = render(system_overrides("meluxina", "parallel.dp_shard=4"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert {"hint=nomultithread", "cpus-per-task=64", "gpus-per-node=4", "partition=gpu", "qos=default"} <= set(lines)
    assert "--cpu-bind=cores" in srun_args(job.script)
    assert 'NCCL_SOCKET_IFNAME="ib0"' in job.script


def test_karolina_eight_gpus_per_node(tmp_path):
    job = render(system_overrides("karolina", "parallel.dp_shard=16"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "gpus-per-node=8", "cpus-per-task=128", "partition=qgpu"} <= set(lines)
    assert "--nproc-per-node=8" in srun_args(job.script)


def test_vega_singularity_with_nv_and_ib0_for_nccl_and_gloo(tmp_path):
    job = render(system_overrides("vega", "parallel.dp_shard=4"), tmp_path / "run")
    assert "singularity exec --nv /ceph/hpc/data/pytorch.sif" in job.script
    assert 'NCCL_SOCKET_IFNAME="ib0"' in job.script and 'GLOO_SOCKET_IFNAME="ib0"' in job.script
    assert "partition=gpu" in sbatch_lines(job.script)


def test_jeanzay_h100_constraint_and_explicit_time(tmp_path):
    job = render(system_overrides("jeanzay", "parallel.dp_shard=4"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert {"constraint=h100", "hint=nomultithread", "time=20:00:00", "gres=gpu:4"} <= set(lines)
    assert not any(line.startswith("partition=") for line in lines)


def test_deucalion_32_cores_per_gpu_gpu_account_and_the_4_node_limit(tmp_path):
    job = render(system_overrides("deucalion", "parallel.dp_shard=16"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"nodes=4", "gpus-per-node=4", "cpus-per-task=128", "partition=normal-a100-80", "time=2-00:00:00"} <= set(lines)
    half = render(system_overrides("deucalion", "parallel.dp_shard=2"), tmp_path / "run2")
    assert {"nodes=1", "gpus-per-node=2", "cpus-per-task=64"} <= set(sbatch_lines(half.script))  # 32 per GPU
    for fact in ('NCCL_IB_HCA="mlx5_0,mlx5_1"', 'NCCL_SOCKET_IFNAME="^lo,docker0"', 'HF_HUB_OFFLINE="1"'):
        assert fact in job.script, fact
    with pytest.raises(ConfigError, match="admits at most 4 node"):
        check_launch(compose(system_overrides("deucalion", "parallel.dp_shard=32")), check_data=False)


def test_discoverer_gres_project_qos_four_hours_and_requeue(tmp_path):
    job = render(system_overrides("discoverer", "parallel.dp_shard=16"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "gres=gpu:8", "partition=common", "account=abc123", "qos=abc123", "time=04:00:00",
            "mem-per-gpu=257G", "requeue", "cpus-per-task=208"} <= set(lines)
    assert "module load nvidia/cuda/12/12.8" in job.script and "HF_HUB_OFFLINE" not in job.script
    with pytest.raises(ConfigError, match="exceeds common's limit"):
        check_launch(compose(system_overrides("discoverer", "cluster.slurm.time=08:00:00")), check_data=False)


def test_arrhenius_one_task_per_gh200_with_its_gpu(tmp_path):
    job = render(system_overrides("arrhenius", "parallel.dp_shard=8"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "ntasks-per-node=4", "cpus-per-task=72", "gpus-per-task=1", "partition=gpu"} <= set(lines)
    assert 'NCCL_NET="AWS Libfabric"' in job.script


def test_daedalus_gh200_torchrun_with_8_cores_per_gpu(tmp_path):
    job = render(system_overrides("daedalus", "parallel.dp_shard=8"), tmp_path / "run")
    bash_syntax_ok(job.script, tmp_path)
    lines = sbatch_lines(job.script)
    assert {"nodes=2", "ntasks-per-node=1", "cpus-per-task=32", "gpus-per-node=4"} <= set(lines)
    assert not any(line.startswith(("partition=", "account=")) for line in lines)


def test_local_overcommits_cpu_ranks_and_asks_for_no_gpu(tmp_path):
    job = render(system_overrides("local", "parallel=tp2_pp2"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert {"nodes=1", "ntasks=4", "overcommit"} <= set(lines)
    assert not any("gpu" in line for line in lines)
    assert "--overcommit" in srun_args(job.script)
    assert "MASTER_ADDR=127.0.0.1\n" in job.script and 'GLOO_SOCKET_IFNAME="lo"' in job.script


def test_chain_jobs_do_not_requeue_and_custom_signal(tmp_path):
    job = render(system_overrides("local", "launch.chain=3", "launch.signal=USR1", "launch.signal_seconds=90",
                                  "launch.signal_batch=false"), tmp_path / "run")
    lines = sbatch_lines(job.script)
    assert "signal=USR1@90" in lines and "no-requeue" in lines
    assert "export EUROTRON_REQUEUE=0" in job.script and "trap 'eurotron_on_signal USR1' USR1" in job.script
    forced = render(system_overrides("local", "launch.chain=3", "launch.requeue=true"), tmp_path / "run2")
    assert "requeue" in sbatch_lines(forced.script)


def test_job_plan_shapes():
    plan = plan_job(compose(system_overrides("lumi", "parallel.tp=8", "parallel.pp=4", "parallel.dp_shard=8")))
    assert (plan.nodes, plan.ranks_per_node, plan.tasks_per_node, plan.cpus_per_task) == (32, 8, 8, 7)
    plan = plan_job(compose(system_overrides("jupiter", "parallel.dp_shard=2")))
    assert (plan.nodes, plan.ranks_per_node, plan.gpus_per_node, plan.cpus_per_task) == (1, 2, 2, 144)
    plan = plan_job(compose(system_overrides("local", "parallel=tp2_pp2_dp2", "parallel.dp_shard=2")))
    assert (plan.nodes, plan.ranks_per_node, plan.tasks_per_node, plan.gpus_per_node) == (1, 8, 8, 0)


@pytest.mark.parametrize("text,seconds", [("30", 1800), ("1:30", 90), ("01:00:00", 3600), ("2-00:00:00", 172800),
                                          ("1-12", 129600), ("1-00:30", 88200)])
def test_slurm_times(text, seconds):
    assert parse_slurm_time(text) == seconds


def test_sbatch_header_comes_first(tmp_path):
    """sbatch stops reading #SBATCH lines at the first command: every directive precedes it."""
    job = render(system_overrides("alps", "parallel.dp_shard=4"), tmp_path / "run")
    lines = job.script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert re.match(r"#!/bin/bash$", lines[0])
