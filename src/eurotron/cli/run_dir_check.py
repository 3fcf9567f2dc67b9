"""A Hydra callback that checks eurotron-train's run_dir before Hydra itself creates it.

Hydra makes the job's output directory (hydra.run.dir / hydra.sweep.dir, both ``${run_dir}`` here)
before our task starts, so a run_dir that is a file or cannot be written would end in Hydra's own
traceback. Checked first, it is one clear error like every other config mistake.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback

from ..errors import UserError
from ..paths import ensure_writable_dir


class RunDirCheck(Callback):
    def __init__(self, app: str = "eurotron-train") -> None:
        self.app = app

    def _check(self, directory: Any) -> None:
        try:
            ensure_writable_dir(str(directory), "run_dir", keep_created=False)  # Hydra makes it next
        except UserError as err:
            print(f"{self.app}: error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)
