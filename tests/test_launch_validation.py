"""eurotron-launch refuses, before writing anything, layouts and settings a system cannot run."""

import pytest

from eurotron.config import ConfigError
from eurotron.launch.validation import check_launch

from launch_support import compose, system_overrides


def problems(*overrides: str, system: str = "lumi") -> str:
    cfg = compose(system_overrides(system, *overrides))
    with pytest.raises(ConfigError) as err:
        check_launch(cfg, check_data=False)
    return str(err.value)


def test_tensor_parallel_must_fit_in_a_node():
    msg = problems("parallel.tp=8", "parallel.dp_shard=1", "model.num_heads=8", "model.num_kv_heads=8",
                   "model.ffn_hidden_size=704", system="meluxina")
    assert "parallel.tp=8" in msg and "inside one node" in msg and "runs 4 ranks per node" in msg


def test_world_size_must_fill_whole_nodes():
    msg = problems("parallel.dp_shard=12", "data.global_batch_size=48")
    assert "world size 12" in msg and "does not fill whole nodes of 8 ranks" in msg


def test_partition_node_limit():
    msg = problems("parallel.dp_shard=40", "data.global_batch_size=40", "cluster.slurm.partition=small-g")
    assert "cluster.slurm.partition='small-g'" in msg and "at most 4 node(s)" in msg and "needs 5" in msg


def test_partition_and_qos_time_limits():
    msg = problems("cluster.slurm.time=1-00:00:00", system="alps")
    assert "cluster.slurm.time='1-00:00:00'" in msg and "exceeds normal's limit of 12:00:00" in msg
    msg = problems("cluster.slurm.qos=boost_qos_dbg", "cluster.slurm.time=01:00:00", system="leonardo")
    assert "boost_qos_dbg's limit of 00:30:00" in msg


def test_qos_minimum_nodes():
    msg = problems("cluster.slurm.qos=boost_qos_bprod", system="leonardo")
    assert "at least 65 nodes" in msg


def test_whole_node_partition_refuses_a_partial_node():
    msg = problems("parallel.dp_shard=4")
    assert "allocates whole nodes" in msg and "4 of 8 GPUs" in msg
    check_launch(compose(system_overrides("lumi", "parallel.dp_shard=4", "cluster.slurm.partition=small-g")),
                 check_data=False)


def test_a_70b_layout_that_does_not_fit_gpu_memory():
    msg = problems("model=llama3_70b", "parallel.tp=4", "parallel.dp_shard=1", "data.seq_len=4096",
                   "data.global_batch_size=16", system="meluxina")
    assert "needs about" in msg and "A100 40 GB has 40 GiB" in msg and "parallel.dp_shard" in msg
    # The same model over 64 nodes: PP4 x FSDP16 does not fit (under PP FSDP2 keeps a quarter of the model
    # gathered in bf16 with fp32 gradients until the step's reduce), PP8 x FSDP8 does.
    assert "needs about" in problems("model=llama3_70b", "parallel.tp=4", "parallel.pp=4", "parallel.dp_shard=16",
                                     "parallel.activation_checkpoint=full", "data.seq_len=4096",
                                     "data.global_batch_size=64", system="meluxina")
    check_launch(compose(system_overrides("meluxina", "model=llama3_70b", "parallel.tp=4", "parallel.pp=8",
                                          "parallel.dp_shard=8", "parallel.activation_checkpoint=full",
                                          "data.seq_len=4096", "data.global_batch_size=64")), check_data=False)


def test_signal_before_the_time_limit_and_chain_settings():
    msg = problems("launch.signal_seconds=3600", "cluster.slurm.time=00:30:00", system="local")
    assert "launch.signal_seconds=3600" in msg and "shorter than the job's time limit" in msg
    msg = problems("launch.chain=2", "checkpoint.resume=never", system="local")
    assert "checkpoint.resume='never'" in msg and "must be auto" in msg
    msg = problems("launch.chain=0", "launch.signal=KILL", system="local")
    assert "launch.chain=0" in msg and "launch.signal='KILL'" in msg


def test_containers_need_an_image():
    cfg = compose(["cluster=lumi", "cluster.slurm.account=p", "data.path=/d", "parallel.dp_shard=8",
                   "data.global_batch_size=64", "data.micro_batch_size=1"])
    with pytest.raises(ConfigError, match="cluster.container.image=None: lumi runs in a container"):
        check_launch(cfg, check_data=False)


def test_account_is_required_where_the_system_needs_one():
    msg = problems("cluster.slurm.account=null", system="leonardo")
    assert "cluster.slurm.account=None: leonardo charges jobs to a project" in msg


def test_every_problem_is_reported_at_once():
    msg = problems("parallel.dp_shard=12", "data.global_batch_size=48", "cluster.slurm.time=9-00:00:00",
                   "launch.chain=0", "cluster.launcher.pattern=mpirun")
    for key in ("world size 12", "cluster.slurm.time", "launch.chain", "cluster.launcher.pattern"):
        assert key in msg, key


def test_training_config_problems_come_first():
    msg = problems("model.num_kv_heads=3", system="local")
    assert "model.num_kv_heads=3" in msg


def test_missing_dataset_is_found_before_the_queue(tmp_path):
    cfg = compose(system_overrides("local", f"data.path={tmp_path / 'nothing'}"))
    with pytest.raises(ConfigError, match="has no manifest.json"):
        check_launch(cfg)
