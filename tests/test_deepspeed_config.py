"""parallel.dp_engine=deepspeed without DeepSpeed installed: the generated DeepSpeed config and the
checks that refuse what it cannot do, before any process starts (issue 16 points 1 and 2)."""

from __future__ import annotations

import pytest

from eurotron.compose import compose_train
from eurotron.config import ConfigError
from eurotron.parallel.deepspeed_config import deepspeed_config
from eurotron.validation import validate_train_config

BASE = ["experiment=demo", "data.path=unused", "data.global_batch_size=16", "data.micro_batch_size=2",
        "optim.grad_clip=0.5"]


def composed(*extra: str):
    cfg, _ = compose_train(BASE + ["parallel=dp2_zero2", *extra])
    return cfg


@pytest.mark.parametrize("layout", ["dp2_zero1", "dp2_zero2", "dp2_zero3", "dp2_zero3_offload"])
def test_shipped_layouts_validate(layout):
    cfg, _ = compose_train(BASE + [f"parallel={layout}"])
    validate_train_config(cfg, world_size=2)


def test_config_is_generated_from_eurotrons():
    cfg = composed("parallel.deepspeed.zero_stage=3", "parallel.deepspeed.offload_optimizer=cpu",
                   "parallel.deepspeed.offload_params=nvme", "parallel.deepspeed.nvme_path=/local/nvme",
                   "parallel.deepspeed.zero_hpz_partition_size=2", "+parallel.deepspeed.config_overrides.zero_optimization.sub_group_size=1000")
    ds = deepspeed_config(cfg, bf16=True, on_gpu=True)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 4)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True, "check_grad_overflow": True}
    assert "optimizer" not in ds and "scheduler" not in ds  # eurotron's AdamW and schedule
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/local/nvme"}
    assert zero["zero_hpz_partition_size"] == 2 and zero["sub_group_size"] == 1000  # the override merged in
    assert deepspeed_config(composed(), bf16=False, on_gpu=False)["bf16"] == {"enabled": False}


@pytest.mark.parametrize("extra, key, fix", [
    (["parallel.pp=2", "parallel.dp_shard=1"], "parallel.pp=2", "PipelineEngine supports ZeRO-1 only"),
    (["parallel.tp=2", "parallel.dp_shard=1"], "parallel.tp=2", "parallel.dp_engine=fsdp for TP x DP"),
    (["parallel.dp_shard=1", "parallel.dp_replicate=2"], "parallel.dp_replicate=2", "use parallel.dp_shard"),
    (["parallel.deepspeed.zero_stage=4"], "parallel.deepspeed.zero_stage=4", "must be 1"),
    (["parallel.deepspeed.offload_params=cpu"], "parallel.deepspeed.offload_params='cpu'", "zero_stage=3"),
    (["parallel.deepspeed.offload_optimizer=disk"], "parallel.deepspeed.offload_optimizer='disk'", "none, cpu, nvme"),
    (["parallel.deepspeed.zero_stage=3", "parallel.deepspeed.offload_optimizer=nvme"],
     "parallel.deepspeed.nvme_path=''", "node-local NVMe"),
    (["parallel.deepspeed.offload_optimizer=nvme", "parallel.deepspeed.nvme_path=/x"],
     "parallel.deepspeed.offload_optimizer='nvme'", "needs ZeRO-3"),
    (["parallel.deepspeed.zero_quantized_weights=true"], "zero_quantized_weights=True", "ZeRO-3"),
    (["parallel.deepspeed.zero_stage=3", "parallel.deepspeed.zero_hpz_partition_size=3"],
     "zero_hpz_partition_size=3", "must divide the data-parallel size 2"),
    (["+parallel.deepspeed.config_overrides.train_batch_size=64"],
     "config_overrides.train_batch_size=64", "set data.global_batch_size instead"),
    (["+parallel.deepspeed.config_overrides.zero_optimization.stage=3"],
     "config_overrides.zero_optimization.stage=3", "parallel.deepspeed.zero_stage"),
    (["+parallel.deepspeed.config_overrides.optimizer.type=Adam"], "config_overrides.optimizer", "optim.*"),
    (["+parallel.deepspeed.config_overrides.zero_optimisation.stage=3"], "config_overrides.zero_optimisation",
     "not a DeepSpeed setting"),
    (["train.spike_sigma=3"], "train.spike_sigma=3", "engine.step()"),
    (["parallel.compile=true"], "parallel.compile=True", "dp_engine=fsdp"),
])
def test_refused_before_start(extra, key, fix):
    cfg = composed(*extra)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    message = str(err.value)
    assert key in message and fix in message, message


# ------------------------------------------------------------------ memory planner (plan/deepspeed_memory.py)
def _recipe(*extra: str):
    cfg, _ = compose_train(["experiment=karolina_llama3_70b", "data.path=/data/tokens", "cluster.slurm.account=x",
                            "parallel.tp=1", "parallel.pp=1", "parallel.pp_virtual_stages=1", "parallel.compile=false",
                            "parallel.sequence_parallel=false", "parallel.dp_engine=deepspeed", "data.seq_len=4096",
                            "data.global_batch_size=1024", *extra])
    return cfg


def test_planner_counts_what_each_zero_stage_keeps_where():
    from eurotron.plan.deepspeed_memory import deepspeed_memory

    params, dp = 70_000_000_000, 32
    cases = {  # (stage, offload_optimizer) -> (GPU bytes, host bytes), bf16: w = g = 2 B, o = 12 B
        (1, "none"): (params * 4 + params * 12 // dp, 0),
        (2, "none"): (params * 2 + params * 14 // dp, 0),
        (3, "none"): (params * 16 // dp, 0),
        (3, "cpu"): (params * 4 // dp, params * 16 // dp),
        (3, "nvme"): (params * 4 // dp, 0),
    }
    for (stage, offload), (gpu, host) in cases.items():
        cfg = _recipe(f"parallel.dp_shard={dp}", f"parallel.deepspeed.zero_stage={stage}",
                      f"parallel.deepspeed.offload_optimizer={offload}", "parallel.deepspeed.nvme_path=/nvme")
        got = deepspeed_memory(cfg, params)
        assert abs(got.gpu_state_bytes - gpu) <= 2 and abs(got.host_bytes - host) <= 2, (stage, offload, got)
    cfg = _recipe(f"parallel.dp_shard={dp}", "parallel.deepspeed.zero_stage=3", "parallel.deepspeed.offload_params=cpu",
                  "parallel.deepspeed.offload_optimizer=cpu")
    got = deepspeed_memory(cfg, params)
    assert got.gpu_state_bytes == params * 2 // dp and got.host_bytes == params * 18 // dp  # gradients only


def test_planner_refuses_what_does_not_fit_a_node_or_a_gpu():
    from eurotron.plan.memory import fit_problem

    # 70B on A100-40GB: ZeRO-2 builds the whole fp32 model on each GPU first; ZeRO-3 one module at a time.
    problem = fit_problem(_recipe("parallel.dp_shard=64", "parallel.deepspeed.zero_stage=2",
                                  "parallel.deepspeed.offload_optimizer=cpu", "parallel.activation_checkpoint=full"))
    assert problem and "ZeRO-2 builds the whole model (263 GiB in fp32)" in problem, problem
    assert fit_problem(_recipe("parallel.dp_shard=64", "parallel.deepspeed.zero_stage=3",
                               "parallel.deepspeed.offload_optimizer=cpu", "parallel.activation_checkpoint=full")) is None
    # An 8B model with its optimizer offloaded from one 8-GPU node: 8 x 8B x 16 B / 8 ranks = 128 GB of
    # host memory, within the 1 TB node; with a 1 GB node (made up) it is refused naming the node RAM.
    small = ["model=llama3_8b", "parallel.dp_shard=8", "parallel.deepspeed.zero_stage=3",
             "parallel.deepspeed.offload_optimizer=cpu", "parallel.activation_checkpoint=full", "data.seq_len=2048"]
    assert fit_problem(_recipe(*small)) is None
    problem = fit_problem(_recipe(*small, "cluster.host_memory_gb=100", "cluster.host_memory_reserve_gb=0"))
    assert problem and "host memory" in problem and "100 GiB" in problem, problem


@pytest.mark.parametrize("pattern", ["torchrun", "srun"])
def test_slurm_job_runs_deepspeed_like_any_layout(pattern, tmp_path):
    """The Slurm templates need nothing DeepSpeed-specific: eurotron-train starts the process group
    (torchrun per node, or srun one task per GPU with RANK/LOCAL_RANK) and hands it to DeepSpeed."""
    import subprocess

    from launch_support import render, system_overrides

    job = render(system_overrides("karolina", "parallel=dp2_zero3_offload", "parallel.dp_shard=16",
                                  f"cluster.launcher.pattern={pattern}"), tmp_path / "run")
    script = tmp_path / "job.sbatch"
    script.write_text(job.script)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "eurotron-train" in job.script and ("torchrun" in job.script) == (pattern == "torchrun")
    assert job.plan.world_size == 16 and job.plan.nodes == 2
