"""torchrun worker for the multi-process tests: runs several training layouts in one launch.

    torchrun --nproc-per-node=N tests/dist_worker.py spec.json

spec.json: {"runs": [{"name": str, "overrides": [hydra overrides], "resume_from": optional
{"run_dir": str, "step": int}}, ...]}. Every run builds a fresh DeviceMesh over the same process
group and trains with the real Trainer; rank 0 writes metrics into each run's run_dir. ``resume_from``
first copies that checkpoint into the run's own checkpoints/ so the run resumes from it (in
whatever layout its overrides choose). A failing run raises, and torchrun stops all ranks.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch.distributed as dist

from eurotron.compose import compose_train
from eurotron.parallel.env import process_env
from eurotron.parallel.mesh import exit_without_finalisation, shut_down_process_group
from eurotron.train.checkpoint import LATEST, step_dir
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config


def copy_checkpoint(src_run: Path, step: int, dst_run: Path) -> None:
    src = step_dir(Path(src_run) / "checkpoints", step)
    dst_root = Path(dst_run) / "checkpoints"
    shutil.rmtree(dst_run, ignore_errors=True)
    dst_root.mkdir(parents=True)
    shutil.copytree(src, dst_root / src.name)
    (dst_root / LATEST).write_text(src.name + "\n")


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    env = process_env()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    timings = {}
    for run in spec["runs"]:
        started = time.perf_counter()
        cfg, yaml_text = compose_train(run["overrides"])
        validate_train_config(cfg, world_size=env.world_size)
        if run.get("resume_from") and env.rank == 0:
            copy_checkpoint(Path(run["resume_from"]["run_dir"]), run["resume_from"]["step"], Path(cfg.run_dir))
        dist.barrier()
        try:
            Trainer(cfg, yaml_text, env).fit()
        except Exception as err:
            raise RuntimeError(f"run {run['name']!r} failed on rank {env.rank}: {err}") from err
        dist.barrier()
        timings[run["name"]] = round(time.perf_counter() - started, 2)
    if env.rank == 0 and spec.get("timings"):
        Path(spec["timings"]).write_text(json.dumps(timings))
    shut_down_process_group()
    exit_without_finalisation(0)  # as eurotron-train does


if __name__ == "__main__":
    main()
