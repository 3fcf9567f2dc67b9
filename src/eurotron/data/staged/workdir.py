"""The work directory of a staged prepare: the resolved config, the plan (slices), one directory per
stage and task, and a ``.done`` marker per task written last, so a task killed at any point leaves
no marker and is done again (its half-written temporary directory is removed), and a rerun skips
every task that has one."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List

from omegaconf import OmegaConf

from ...config import PrepareConfig, to_object
from ..errors import DataError

CONFIG_FILE = "config.yaml"
PLAN_FILE = "plan.json"


def default_work_dir(cfg: PrepareConfig) -> Path:
    out = Path(cfg.output_dir).expanduser().resolve()
    return Path(cfg.staged.work_dir).expanduser().resolve() if cfg.staged.work_dir else out.with_name(out.name + ".staged")


def config_yaml(cfg: PrepareConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


class WorkDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------------------ config, plan
    def load_config(self) -> PrepareConfig:
        file = self.root / CONFIG_FILE
        if not file.is_file():
            raise DataError(f"{self.root} holds no {CONFIG_FILE}: it is not a staged prepare's work directory "
                            f"(eurotron-prepare launch=true writes one)")
        return to_object(OmegaConf.merge(OmegaConf.structured(PrepareConfig), OmegaConf.load(file)), PrepareConfig)

    def plan(self) -> Dict[str, Any]:
        return json.loads((self.root / PLAN_FILE).read_text())

    def write_json(self, name: str, value: Any) -> None:
        _atomic_text(self.root / name, json.dumps(value, indent=2) + "\n")

    # ------------------------------------------------------------------------------------ tasks
    def task_dir(self, stage: str, task: int) -> Path:
        return self.root / stage / f"{task:05d}"

    def marker(self, stage: str, task: int) -> Path:
        return self.root / stage / f"{task:05d}.done"

    def done(self, stage: str, task: int) -> bool:
        return self.marker(stage, task).is_file()

    def info(self, stage: str, task: int) -> Dict[str, Any]:
        """What a finished task recorded in its marker."""
        marker = self.marker(stage, task)
        if not marker.is_file():
            raise DataError(f"{stage} task {task} has not finished ({marker} is missing); run it first "
                            f"(resubmit: eurotron-prepare launch=true with the same config)")
        return json.loads(marker.read_text())

    def pending(self, stage: str, count: int) -> List[int]:
        return [t for t in range(count) if not self.done(stage, t)]

    @contextmanager
    def task_output(self, stage: str, task: int, info: Dict[str, Any]) -> Iterator[Path]:
        """A fresh temporary directory to write the task's output in; on success it becomes
        task_dir(stage, task) and the marker (holding `info`, filled in by the caller) is written."""
        final = self.task_dir(stage, task)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # an earlier attempt killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # what an earlier, killed attempt left (it wrote no marker)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _atomic_text(self.marker(stage, task), json.dumps(info, indent=2) + "\n")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
