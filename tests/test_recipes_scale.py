"""Every shipped cluster recipe, through the real TP/PP/FSDP plans on torch's fake process group.

The launcher's accounting model (tests/test_launch_recipes.py) is one check; this one applies the
actual parallelize code to the meta-device model at the recipe's full world size and asserts that
the shards tile the model and that the measured per-rank bytes fit the cluster's GPU memory.
"""

from pathlib import Path

import pytest
import torch.distributed as dist

from eurotron.compose import compose_train
from eurotron.parallel.scale import scale_check

GB = 1e9
RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "experiment").glob("*.yaml")
                 if p.stem != "demo")


def test_every_cluster_has_an_8b_and_a_70b_recipe():
    systems = {name.split("_")[0] for name in RECIPES}
    assert len(systems) >= 9
    for system in systems:
        sizes = {name.rsplit("_", 1)[-1] for name in RECIPES if name.startswith(system + "_")}
        assert {"8b", "70b"} <= sizes, (system, sizes)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_layout_fits_its_gpus_under_the_real_plans(recipe):
    cfg, _ = compose_train([f"experiment={recipe}", "data.path=/recipes/need/no/data"])
    gpu_bytes = cfg.cluster.gpu_memory_gb * GB
    assert gpu_bytes > 0, f"{recipe}: cluster.gpu_memory_gb is not set"
    report = scale_check(cfg)
    assert not dist.is_initialized()
    assert report.sharded_total == report.total_params, recipe
    assert report.max_bytes_per_rank() < gpu_bytes, (
        f"{recipe}: {report.max_bytes_per_rank() / GB:.1f} GB per rank > {cfg.cluster.gpu_memory_gb} GB\n{report.format()}"
    )
