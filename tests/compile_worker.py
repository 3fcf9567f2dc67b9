"""torchrun worker for tests/test_compile_recompute.py: trains several layouts in one launch and
records, per run, dynamo's graph-break count and how many graphs were compiled.

    torchrun --nproc-per-node=N tests/compile_worker.py spec.json

spec.json: {"runs": [{"name": str, "overrides": [...]}, ...], "result": path}. Rank 0 writes
{name: {"ranks": [{"graph_breaks": {reason: count}, "unique_graphs": int} per rank], "seconds": float}}
to ``result``;
every rank's dynamo state is reset between runs so each run's counts are its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch._dynamo.utils import counters

from eurotron.compose import compose_train
from eurotron.parallel.env import process_env
from eurotron.parallel.mesh import exit_without_finalisation, shut_down_process_group
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    env = process_env()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    result = {}
    for run in spec["runs"]:
        torch._dynamo.reset()
        counters.clear()
        started = time.perf_counter()
        cfg, yaml_text = compose_train(run["overrides"])
        validate_train_config(cfg, world_size=env.world_size)
        try:
            Trainer(cfg, yaml_text, env).fit()
        except Exception as err:
            raise RuntimeError(f"run {run['name']!r} failed on rank {env.rank}: {err}") from err
        dist.barrier()
        # Every rank's counts (ranks trace different stages and shards).
        mine = {"graph_breaks": dict(counters["graph_break"]), "unique_graphs": counters["stats"]["unique_graphs"]}
        everyone = [None] * env.world_size
        dist.all_gather_object(everyone, mine)
        result[run["name"]] = {"ranks": everyone, "seconds": round(time.perf_counter() - started, 1)}
    if env.rank == 0:
        Path(spec["result"]).write_text(json.dumps(result))
    shut_down_process_group()
    exit_without_finalisation(0)


if __name__ == "__main__":
    main()
