"""Shipped recipes (configs/experiment/<system>_<model>.yaml): each composes, fits its system's nodes,
partition limits and GPU memory (plan/memory.py), and renders a valid script; every system has an
8B-class and a 70B-class recipe. Plus the memory estimator's own accounting."""

import subprocess

import pytest

from eurotron.compose import compose_train
from eurotron.launch.render import render_job
from eurotron.launch.validation import check_launch
from eurotron.model import build_model, count_parameters
from eurotron.plan.layout import total_params
from eurotron.plan.memory import GiB, estimate_memory, fit_problem

from launch_support import REPO, REQUIRED

EUROHPC = ("lumi", "leonardo", "marenostrum5", "jupiter", "alps", "meluxina", "karolina", "vega", "jeanzay",
           "deucalion", "discoverer", "arrhenius", "daedalus")
RECIPES = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")
                 if p.stem.split("_")[0] in EUROHPC)


def compose_recipe(name: str, *extra: str):
    system = name.split("_")[0]
    cfg, _ = compose_train([f"experiment={name}", "data.path=/data/tokens", *REQUIRED[system], *extra])
    return cfg


def test_every_system_has_an_8b_and_a_70b_recipe():
    classes = {}
    for name in RECIPES:
        billions = total_params(compose_recipe(name).model) / 1e9
        size = "8b" if 6 <= billions <= 9 else "70b" if 65 <= billions <= 75 else f"{billions:.0f}b"
        classes.setdefault(name.split("_")[0], set()).add(size)
    assert classes == {system: {"8b", "70b"} for system in EUROHPC}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fits_its_system(name, tmp_path):
    cfg = compose_recipe(name)
    assert cfg.cluster.name == name.split("_")[0]
    plan = check_launch(cfg, check_data=False)  # nodes, partition/QoS limits, GPU memory, values
    est = estimate_memory(cfg)
    assert est.fits(cfg.cluster.gpu_memory_gb, cfg.cluster.memory_reserve_gb), est.format()
    # At least 8 nodes, or all a job may have where the partition allows fewer (Deucalion 4, Discoverer+ 2).
    limit = cfg.cluster.slurm.partitions.get(cfg.cluster.slurm.partition)
    assert plan.world_size == cfg.parallel.world_size and plan.nodes >= min(8, limit.max_nodes if limit and limit.max_nodes else 8)
    job = render_job(cfg, tmp_path / name, tmp_path, plan)
    script = tmp_path / "job.sbatch"
    script.write_text(job.script)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert cfg.run_dir.startswith(cfg.cluster.storage.checkpoints)


def test_parameter_counts_match_the_model():
    for model in ("tiny", "llama2_7b", "llama3_8b", "mistral_7b", "apertus_8b", "llama3_70b", "apertus_70b"):
        cfg, _ = compose_train([f"model={model}"])
        assert total_params(cfg.model) == count_parameters(build_model(cfg.model, device="meta")), model


def _estimate(*overrides):
    cfg, _ = compose_train(["model=llama3_70b", "data=custom", "data.path=/d", "data.seq_len=4096",
                            "data.micro_batch_size=1", *overrides])
    return cfg, estimate_memory(cfg)


def test_sharding_divides_the_training_state():
    _, one = _estimate("parallel.tp=8", "parallel.pp=8", "data.global_batch_size=64")
    _, fsdp = _estimate("parallel.tp=8", "parallel.pp=8", "parallel.dp_shard=4", "data.global_batch_size=64")
    _, ddp = _estimate("parallel.tp=8", "parallel.pp=8", "parallel.dp_replicate=4", "parallel.dp_engine=ddp",
                       "parallel.sequence_parallel=false", "data.global_batch_size=64")
    mid = 3  # a middle pipeline rank: 10 layers, no embedding or output
    assert fsdp.ranks[mid].params == pytest.approx(one.ranks[mid].params / 4, rel=1e-6)
    assert ddp.ranks[mid].params == one.ranks[mid].params
    # 70B over 64 GPUs without data-parallel sharding: ~70.6e9 / 64 params x 16 B
    assert one.ranks[mid].state_bytes == one.ranks[mid].params * 16
    assert 15 * GiB < one.ranks[mid].state_bytes < 18 * GiB


def test_activations_follow_checkpointing_and_the_pipeline_schedule():
    _, none = _estimate("parallel.tp=8", "parallel.pp=4", "data.global_batch_size=32")
    _, full = _estimate("parallel.tp=8", "parallel.pp=4", "data.global_batch_size=32", "parallel.activation_checkpoint=full")
    _, gpipe = _estimate("parallel.tp=8", "parallel.pp=4", "data.global_batch_size=32", "parallel.pp_schedule=gpipe")
    assert full.ranks[0].activation_bytes < none.ranks[0].activation_bytes / 3
    # 1F1B: the first stage holds pp micro-batches, the last one; GPipe holds all 32 everywhere.
    assert none.ranks[0].activation_bytes == pytest.approx(4 * none.ranks[3].activation_bytes, rel=0.01)
    assert gpipe.ranks[3].activation_bytes == pytest.approx(32 * none.ranks[3].activation_bytes, rel=0.01)
    assert none.ranks[3].logits_bytes > 0 and none.ranks[0].logits_bytes == 0


def test_fit_problem_names_the_numbers():
    cfg, _ = _estimate("parallel.tp=4", "data.global_batch_size=8", "cluster=meluxina")
    message = fit_problem(cfg)
    assert message and "GiB" in message and "A100 40 GB" in message
    local, _ = _estimate("parallel.tp=4", "data.global_batch_size=8", "cluster=local")
    assert fit_problem(local) is None  # no GPU memory declared: nothing to check
