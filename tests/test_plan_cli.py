"""eurotron-plan: layouts ranked by predicted speed, JSON output, a fixed layout, clear errors; and
eurotron-launch's plan line for what it submits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eurotron.compose import compose_train
from eurotron.plan.search import evaluate

PLAN = str(Path(sys.executable).parent / "eurotron-plan")
REQUIRED = ("tp", "pp", "pp_virtual_stages", "dp_shard", "dp_replicate", "micro_batch_size", "activation_checkpoint",
            "pp_schedule", "tokens_per_s_per_gpu", "mfu", "step_time_s", "memory_gib", "fits", "gpu_hours")


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PLAN, *args], capture_output=True, text=True, timeout=300)


def test_json_lists_feasible_layouts_best_first_with_their_cost():
    done = plan("experiment=jupiter_llama3_8b", "plan.nodes=2", "plan.tokens=1e11", "plan.format=json")
    assert done.returncode == 0, done.stderr
    layouts = json.loads(done.stdout)["layouts"]
    assert len(layouts) > 10
    speeds = [entry["tokens_per_s_per_gpu"] for entry in layouts]
    assert speeds == sorted(speeds, reverse=True)
    for entry in layouts:
        assert all(key in entry for key in REQUIRED), entry
        assert entry["fits"] and entry["memory_gib"] <= 96 - 4
        assert entry["tp"] * entry["pp"] * entry["dp_shard"] * entry["dp_replicate"] == 8 == entry["gpus"]
        hours = 1e11 / (entry["tokens_per_s_per_gpu"] * 8) / 3600
        assert entry["gpu_hours"] == pytest.approx(hours * 8) and entry["node_hours"] == pytest.approx(hours * 2)
        assert entry["energy_mwh"] == pytest.approx(entry["node_hours"] * 3000 / 1e6)
        assert sum(entry["memory_by_component_gib"].values()) == pytest.approx(entry["memory_gib"])
    # An 8B model on 8 GPUs: the best layouts do without tensor parallelism.
    assert layouts[0]["tp"] == 1


def test_fixed_layout_is_exactly_the_recipe_and_text_output_names_it():
    done = plan("experiment=lumi_llama3_70b", "plan.fixed_layout=true", "plan.format=json")
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)["layouts"]
    cfg, _ = compose_train(["experiment=lumi_llama3_70b", "data.path=/x"])
    par = cfg.parallel
    assert (entry["tp"], entry["pp"], entry["dp_shard"], entry["pp_virtual_stages"], entry["activation_checkpoint"]) == \
        (par.tp, par.pp, par.dp_shard, par.pp_virtual_stages, par.activation_checkpoint)
    assert entry["billing_unit"] == "GPU-hours" and entry["billed"] == pytest.approx(entry["gpu_hours"] / 2)
    text = plan("experiment=lumi_llama3_70b", "plan.fixed_layout=true")
    expected = "  1. " + evaluate(cfg, cfg.plan.tokens).line().split(":")[0] + ":"
    assert text.returncode == 0 and expected in text.stdout, text.stdout


def test_no_fitting_layout_and_bad_keys_are_clear_errors():
    done = plan("model=llama3_70b", "cluster=meluxina", "plan.nodes=1", "data.global_batch_size=64")
    assert done.returncode != 0
    assert "plan.nodes=1: no layout of llama3_70b fits 1 node(s) of meluxina (40 GB per GPU" in done.stderr, done.stderr
    assert "raise plan.nodes" in done.stderr and "Traceback" not in done.stderr
    done = plan("experiment=alps_apertus_8b", "plan.format=xml", "plan.tokens=0")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "plan.format='xml': must be one of text, json" in done.stderr, done.stderr
    assert "plan.tokens=0" in done.stderr
    done = plan("experiment=demo")
    assert "cluster.gpus_per_node=0: cluster 'local' declares no GPUs" in done.stderr, done.stderr
    done = plan("experiment=jupiter_llama3_8b", "plan.fixed_layout=true", "parallel.tp=3")
    assert done.returncode != 0 and "parallel.tp=3" in done.stderr, done.stderr


def test_help_documents_the_plan_keys():
    done = plan("--help")
    assert done.returncode == 0
    for key in ("plan.tokens", "plan.nodes", "plan.fixed_layout", "plan.format", "plan.top"):
        assert key in done.stdout


def test_launch_prints_the_plan_line_of_what_it_submits():
    from launch_support import REPO  # noqa: F401  (tests/ on sys.path)
    cfg, _ = compose_train(["experiment=jupiter_llama3_8b", "data.path=/x"])
    line = evaluate(cfg, cfg.plan.tokens).line()
    done = subprocess.run([str(Path(sys.executable).parent / "eurotron-launch"), "experiment=jupiter_llama3_8b",
                           "cluster.slurm.account=a", "data.path=/nonexistent", "launch.dry_run=true"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"eurotron-launch: plan (1e+12 tokens): {line}" in done.stderr, done.stderr
