"""eurotron-plan: the memory, speed and cost of a run before the allocation is asked for.

  eurotron-plan experiment=alps_apertus_70b plan.tokens=1e12           # best layouts on the recipe's nodes
  eurotron-plan model=llama3_70b cluster=lumi data.seq_len=8192 data.global_batch_size=512 plan.nodes=64
  eurotron-plan experiment=lumi_llama3_70b plan.fixed_layout=true       # exactly the recipe's layout
  eurotron-plan ... plan.format=json                                    # {"layouts": [...]}, best first

Every layout is validated as eurotron-train would validate it; memory per GPU comes from
plan/memory.py, speed from plan/throughput.py (calibrated on published runs; README "Planning an
allocation"), cost from the token budget (plan.tokens), the cluster's billing unit and node power.
"""

from __future__ import annotations

import json
import math
import sys
from typing import List

import hydra
from omegaconf import DictConfig

from ..config import ConfigError, TrainConfig
from ..paths import config_dir
from ..plan.search import PlannedLayout, evaluate, is_valid, search
from ..validation import validate_plan_config, validate_train_config
from .common import check_experiment_names, exit_on_user_error, typed_config

APP = "eurotron-plan"


def plan_layouts(cfg: TrainConfig) -> List[PlannedLayout]:
    """The fixed layout alone, or every feasible layout best first (an error when none fits)."""
    validate_plan_config(cfg)
    per_node = cfg.cluster.gpus_per_node
    nodes = cfg.plan.nodes or math.ceil(cfg.parallel.world_size / per_node)
    if cfg.plan.fixed_layout:
        if not is_valid(cfg):
            cfg.data.path = cfg.data.path if cfg.data.path not in ("", "???") else "<planned>"
            validate_train_config(cfg)  # raises, naming what is wrong with the layout
        if cfg.plan.nodes is not None and cfg.parallel.world_size != nodes * per_node:
            raise ConfigError(f"plan.nodes={cfg.plan.nodes}: the fixed layout uses {cfg.parallel.world_size} GPUs, "
                              f"not {nodes * per_node} ({per_node} per node); drop plan.nodes or change parallel.*")
        return [evaluate(cfg, cfg.plan.tokens)]
    planned = search(cfg, nodes, cfg.plan.tokens)
    feasible = [p for p in planned if p.fits]
    if not feasible:
        least = min(planned, key=lambda p: p.memory_gib) if planned else None
        detail = (f"; the smallest needs {least.memory_gib:.1f} GiB per GPU ({least.line()})" if least else
                  f"; no layout divides {nodes * per_node} GPUs for this model and batch")
        raise ConfigError(f"plan.nodes={nodes}: no layout of {cfg.model.name} fits {nodes} node(s) of "
                          f"{cfg.cluster.name} ({cfg.cluster.gpu_memory_gb:g} GB per GPU, "
                          f"{cfg.cluster.memory_reserve_gb:g} reserved){detail}; raise plan.nodes or lower "
                          f"data.global_batch_size / data.seq_len")
    return feasible


def run(cfg: DictConfig) -> List[PlannedLayout]:
    train_cfg: TrainConfig = typed_config(cfg, TrainConfig)
    layouts = plan_layouts(train_cfg)
    plan, c, d = train_cfg.plan, train_cfg.cluster, train_cfg.data
    if plan.format == "json":
        print(json.dumps({"layouts": [p.as_dict() for p in layouts]}), flush=True)
        return layouts
    print(f"{train_cfg.model.name} on {c.name} ({c.gpu_model}, {c.gpus_per_node} per node): seq {d.seq_len}, "
          f"{d.global_batch_size} sequences per step, {plan.tokens:.3g} tokens", flush=True)
    for rank, p in enumerate(layouts[:plan.top], start=1):
        print(f"{rank:3d}. {p.line()}", flush=True)
        memory = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in p.memory_by_component_gib.items())
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in p.step_parts_s.items())
        print(f"     memory GiB: {memory}; step s: {parts}", flush=True)
    if len(layouts) > plan.top:
        print(f"... {len(layouts) - plan.top} more (plan.top=N, or plan.format=json for all)", flush=True)
    return layouts


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="plan")
def hydra_main(cfg: DictConfig) -> None:
    exit_on_user_error(APP, lambda: run(cfg))


def main() -> None:
    exit_on_user_error(APP, lambda: check_experiment_names(sys.argv[1:]))
    hydra_main()


if __name__ == "__main__":
    main()
