"""torchrun worker (8 processes) writing checkpoints sharded TP2 x PP2 x DP2 for the converter tests.

    torchrun --nproc-per-node=8 tests/convert_layout_worker.py spec.json

spec.json: {"synthetic": {"out": step dir, "family": str, "seed": int},
            "runs": [{"name": str, "overrides": [hydra overrides with train.init_from=...]}]}

* ``synthetic``: the seeded model of ``convert_support.small_config(family)`` saved as DTensors on a
  ("pp", "dp", "tp") = (2, 2, 2) mesh by DCP directly, independent of eurotron's parallel plans.
  Pipeline rank 0 holds the embedding and the first half of the layers, rank 1 the rest, the final norm
  and the output head. On the (dp, tp) sub-mesh 2-D weights are sharded FSDP-style on dim 0 over dp
  and, over tp, column-wise (dim 0) or, for the row-parallel ``wo``/``w2`` and the embedding, on dim 1;
  vectors are sharded over dp when they divide evenly and replicated otherwise.
* ``runs``: the real Trainer under the overrides' layout loads ``train.init_from`` into its
  parallelised model parts and saves its step-0 checkpoint, as a TP2 x PP2 x DP2 run writes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from eurotron.parallel.mesh import exit_without_finalisation, shut_down_process_group

from convert_support import random_eurotron_model, run_config_yaml, small_config

ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")


def owned_by(fqn: str, pp_rank: int, num_layers: int) -> bool:
    if fqn.startswith("layers."):
        return (int(fqn.split(".")[1]) < num_layers // 2) == (pp_rank == 0)
    return (pp_rank == 0) == fqn.startswith("tok_embeddings")


def placements(fqn: str, shape) -> list:
    if len(shape) == 2:
        return [Shard(0), Shard(1) if fqn.endswith(ROW_PARALLEL) else Shard(0)]
    return [Shard(0) if shape[0] % 2 == 0 else Replicate(), Replicate()]


def save_synthetic(out: Path, family: str, seed: int) -> None:
    mesh = init_device_mesh("cpu", (2, 2, 2), mesh_dim_names=("pp", "dp", "tp"))
    pp_rank = mesh.get_local_rank("pp")
    cfg = small_config(family)
    model = random_eurotron_model(cfg, seed=seed)
    sub = mesh["dp", "tp"]
    state = {
        fqn: distribute_tensor(tensor, sub, placements(fqn, tensor.shape))
        for fqn, tensor in model.state_dict().items()
        if owned_by(fqn, pp_rank, cfg.num_layers)
    }
    dcp.save({"model": state}, checkpoint_id=str(out / "model_optim"))
    if dist.get_rank() == 0:
        (out / "config.yaml").write_text(run_config_yaml(cfg))
        (out / "trainer.json").write_text(json.dumps({"step": 1, "tokens_seen": 0}))
    dist.barrier()


def save_from_trainer(overrides) -> None:
    from eurotron.compose import compose_train
    from eurotron.parallel.env import process_env
    from eurotron.train.init_from import load_initial_weights
    from eurotron.train.trainer import Trainer
    from eurotron.validation import validate_train_config

    env = process_env()
    cfg, yaml_text = compose_train(overrides)
    validate_train_config(cfg, world_size=env.world_size)
    trainer = Trainer(cfg, yaml_text, env)
    load_initial_weights(trainer.model_parts, cfg.train.init_from, cfg.model)
    trainer.save_checkpoint()
    dist.barrier()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    synthetic = spec.get("synthetic")
    if synthetic:
        save_synthetic(Path(synthetic["out"]), synthetic["family"], int(synthetic["seed"]))
    for run in spec.get("runs", []):
        try:
            save_from_trainer(run["overrides"])
        except Exception as err:
            raise RuntimeError(f"run {run['name']!r} failed on rank {dist.get_rank()}: {err}") from err
    shut_down_process_group()
    exit_without_finalisation(0)  # as eurotron-train does


if __name__ == "__main__":
    main()
