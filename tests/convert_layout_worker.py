"""torchrun worker: write the model of a seeded config as a DCP checkpoint sharded over a 3D mesh.

    torchrun --nproc-per-node=8 tests/convert_layout_worker.py OUT_STEP_DIR FAMILY SEED

Mesh ("pp", "dp", "tp") = (2, 2, 2), as Megatron orders ranks. Pipeline rank 0 holds the embedding and
the first half of the layers, rank 1 the rest, the final norm and the output head. On the (dp, tp)
sub-mesh every 2-D weight is a DTensor sharded FSDP-style on dim 0 over dp and, over tp, column-wise
(dim 0) or, for the row-parallel ``wo``/``w2`` and the embedding, on dim 1; vectors are sharded over dp
where they divide evenly and replicated otherwise. So each tensor is stored as 4 chunks by 4 ranks (and
replicas), the way a TP×PP×FSDP run stores it, without depending on the trainer's parallel plans.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

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


def main() -> None:
    out, family, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo")
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
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
