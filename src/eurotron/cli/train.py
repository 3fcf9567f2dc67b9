"""eurotron-train: compose the Hydra config, validate it, train.

  torchrun --standalone --nproc-per-node=4 --no-python eurotron-train experiment=demo   # TP2 x PP2
  eurotron-train experiment=demo parallel=single
  eurotron-train model=llama3_8b data=custom data.path=/scratch/p/tokens train.steps=10000
  eurotron-train --multirun optim.lr=1e-4,3e-4 name=lr_sweep   # a sweep
  eurotron-train --config-file runs/x/config.yaml              # a saved, resolved config as is (Slurm jobs)
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ..config import ConfigError, TrainConfig, load_config_file
from ..paths import config_dir
from ..parallel.env import process_env
from ..validation import validate_train_config
from ..launch.sweep import SweepPoint, record_point
from .common import check_experiment_names, exit_on_user_error, resolved_yaml, sweep_context, typed_config

APP = "eurotron-train"
CONFIG_FILE_FLAG = "--config-file"


def run(cfg: DictConfig) -> dict:
    sweep = sweep_context()
    if sweep is not None and not sweep.run_dir_overridden:
        cfg.run_dir = sweep.point_dir  # each point its own run dir: <run_dir>/<n>, never a shared one
    train_cfg: TrainConfig = typed_config(cfg, TrainConfig)
    env = process_env()
    validate_train_config(train_cfg, world_size=env.world_size)
    from ..train import preemption
    from ..train.trainer import Trainer  # heavy imports only after the config is known to be good

    preemption.install()  # the time-limit signal of a Slurm job: checkpoint, then requeue or exit
    result = Trainer(train_cfg, resolved_yaml(cfg)).fit()
    _shut_down_process_group()
    preemption.finish()
    if sweep is not None and env.rank == 0:
        record_point(sweep.sweep_dir, SweepPoint(
            num=sweep.num, overrides=sweep.overrides, run_dir=train_cfg.run_dir,
            final_step=result.get("step"), final_loss=result.get("loss"), final_eval_loss=result.get("eval_loss")))
    return result


def _shut_down_process_group() -> None:
    """Tear gloo/NCCL down explicitly (left to interpreter exit, their threads can abort the process)."""
    from ..parallel.mesh import shut_down_process_group

    global _ran_a_process_group
    _ran_a_process_group = shut_down_process_group() or _ran_a_process_group


# Set once a multi-process run has torn its process group down: the process then ends without
# interpreter finalisation (parallel.mesh.exit_without_finalisation says why).
_ran_a_process_group = False


def _exit_after_distributed_run() -> None:
    if _ran_a_process_group:
        from ..parallel.mesh import exit_without_finalisation

        exit_without_finalisation(0)


def run_config_file(args: list) -> dict:
    """Train from a resolved config file (what eurotron-launch saves): loaded as is, never re-composed."""
    if len(args) != 1:
        raise ConfigError(f"{CONFIG_FILE_FLAG} takes exactly one path and no overrides (got {args}); "
                          f"edit the file or compose a new config with overrides instead")
    return run(load_config_file(args[0], what=CONFIG_FILE_FLAG))


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    exit_on_user_error(APP, lambda: run(cfg))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CONFIG_FILE_FLAG:
        exit_on_user_error(APP, lambda: run_config_file(sys.argv[2:]))
    else:
        exit_on_user_error(APP, lambda: check_experiment_names(sys.argv[1:]))
        hydra_main()
    _exit_after_distributed_run()


if __name__ == "__main__":
    main()
