"""torchrun worker for tests/test_checkpoint_reliability.py: the multi-rank checkpoint checks in one launch.

    torchrun --nproc-per-node=2 tests/checkpoint_reliability_worker.py spec.json

spec.json: {"base": [hydra overrides], "run_dir": str}. On a TP2 layout with checkpoint.async_save=true:
1. train 4 steps (checkpoints at 2 and 4, written in the background);
2. rank 0 writes 64 KB of random bytes into rank 1's shard of step 4;
3. resume to step 6: every rank must skip step 4 and resume from step 2 (no deadlock, same decision).
Rank 0 writes a JSON result next to the spec.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from eurotron.compose import compose_train
from eurotron.parallel.env import process_env
from eurotron.parallel.mesh import exit_without_finalisation, shut_down_process_group
from eurotron.train.trainer import Trainer


def train(overrides):
    cfg, yaml_text = compose_train(overrides)
    trainer = Trainer(cfg, yaml_text)
    trainer.fit()
    return trainer


def main() -> None:
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    run_dir = Path(spec["run_dir"])
    base = [*spec["base"], f"run_dir={run_dir}", "checkpoint.async_save=true", "checkpoint.every=2"]
    first = train([*base, "train.steps=4"])
    root = run_dir / "checkpoints"
    result = {"latest_after_first": (root / "latest").read_text().strip(),
              "steps_after_first": sorted(p.name for p in root.glob("step_*")),
              "manifest": (root / "step_00000004" / "checksums.json").exists(), "first_step": first.step}
    if process_env().rank == 0:
        shard = sorted((root / "step_00000004" / "model_optim").glob("__1_*.distcp"))[0]
        with open(shard, "r+b") as f:
            f.seek(min(4096, max(shard.stat().st_size - 65536, 0)))
            f.write(os.urandom(65536))
        result["corrupted"] = shard.name
    dist.barrier()
    resumed = train([*base, "train.steps=6"])
    result["resumed_step"] = resumed.step
    if process_env().rank == 0:
        (spec_path.parent / "result.json").write_text(json.dumps(result))
    shut_down_process_group()
    exit_without_finalisation(0)


if __name__ == "__main__":
    main()
