"""eurotron-train: compose the Hydra config, validate it, train.

  eurotron-train experiment=demo
  eurotron-train model=llama3_8b data=custom data.path=/scratch/p/tokens train.steps=10000
  eurotron-train --multirun optim.lr=1e-4,3e-4 name=lr_sweep   # a sweep
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..config import TrainConfig
from ..paths import config_dir
from ..parallel.env import process_env
from ..validation import validate_train_config
from .common import exit_on_user_error, resolved_yaml, typed_config


def run(cfg: DictConfig) -> dict:
    train_cfg: TrainConfig = typed_config(cfg, TrainConfig)
    validate_train_config(train_cfg, world_size=process_env().world_size)
    from ..train.trainer import Trainer  # heavy imports only after the config is known to be good

    return Trainer(train_cfg, resolved_yaml(cfg)).fit()


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    exit_on_user_error("eurotron-train", lambda: run(cfg))


if __name__ == "__main__":
    main()
