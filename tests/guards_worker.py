"""torchrun worker for test_train_guards: non-finite steps injected on ONE rank of a pipeline run.

    torchrun --nproc-per-node=2 tests/guards_worker.py spec.json

spec.json: {"runs": [{"name", "overrides", "grad_nan": {rank: [steps]}, "loss_nan": {rank: [steps]},
"scale_nan": {rank: [steps]}, "state_nan_before_save": {rank: [steps]}}]}. The poison is applied by monkeypatching the trainer on
the named rank only; every rank writes what it decided into <run_dir>/rank<r>.json (skipped steps,
scheduler position, optimizer steps, or the error that stopped it), so the test can check that all
ranks took the same decisions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from eurotron.compose import compose_train
from eurotron.parallel.env import process_env
from eurotron.parallel.mesh import exit_without_finalisation, shut_down_process_group
from eurotron.train.nonfinite import TrainingHalted
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config


def poisoned(run: dict, rank: int):
    def steps(key):
        return set(run.get(key, {}).get(str(rank), []))

    grad_nan, loss_nan, state_nan = steps("grad_nan"), steps("loss_nan"), steps("state_nan_before_save")
    scale_nan = steps("scale_nan")  # every gradient of the rank NaN (reaches engines that reduce in backward)

    class Poisoned(Trainer):
        def forward_backward(self, micro_batches, kept):
            if self.step + 1 in scale_nan:
                kept = kept * float("nan")
            loss_sum = super().forward_backward(micro_batches, kept)
            if self.step + 1 in grad_nan:
                next(self.model_parts[0].parameters()).grad.fill_(float("nan"))
            if self.step + 1 in loss_nan:
                loss_sum = loss_sum * float("nan")
            return loss_sum

        def checkpoint_now(self):
            if self.step in state_nan:
                next(self.model_parts[0].parameters()).data.view(-1)[0] = float("inf")
            return super().checkpoint_now()

    return Poisoned


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    env = process_env()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    for run in spec["runs"]:
        cfg, yaml_text = compose_train(run["overrides"])
        validate_train_config(cfg, world_size=env.world_size)
        trainer = poisoned(run, env.rank)(cfg, yaml_text, env)
        outcome = {"error": None}
        try:
            trainer.fit()
        except TrainingHalted as err:
            outcome["error"] = str(err)
        outcome.update(skipped=trainer.guard.skipped, step=trainer.step,
                       scheduler_epoch=trainer.scheduler.last_epoch,
                       optimizer_steps=[int(s["step"]) for s in trainer.optimizer.state.values()][:1])
        Path(cfg.run_dir, f"rank{env.rank}.json").write_text(json.dumps(outcome))
        dist.barrier()
    shut_down_process_group()
    exit_without_finalisation(0)


if __name__ == "__main__":
    main()
