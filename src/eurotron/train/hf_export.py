"""``checkpoint.export_hf_every``: a Hugging Face directory next to the DCP checkpoint, during training,
so evaluation harnesses can follow a run.

When the checkpoint of a step divisible by N is complete (renamed into place and named by `latest`;
with ``async_save`` that happens in the background commit), rank 0 alone converts it into
``<step dir>/hf/`` with ``eurotron-convert to-hf``'s own code (one tensor at a time, from the files, no
process group), in a thread of its own so training goes on. The directory appears complete or not at
all (to-hf writes a staging directory and renames it). It lives and is pruned with its checkpoint
(``checkpoint.keep_last``).

A failed export does not stop the run (the checkpoint is intact and ``eurotron-convert to-hf`` can
convert it by hand): it is printed as an error and written to ``<step dir>/hf.error``, which a
harness polling for ``hf/`` can see. One export runs at a time: the next commit waits for the previous
one before pruning, so a checkpoint is never deleted under its export, and the trainer waits for the
last one before it exits. A resumed run exports the checkpoint it resumed from when that export is due
but missing (the previous job ended during it).
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

HF_DIR = "hf"
ERROR_FILE = "hf.error"


def export_due(step: int, every: int) -> bool:
    return every > 0 and step > 0 and step % every == 0


class HFExporter:
    """Rank 0's exporter; ``committed`` is called after each checkpoint commit, before pruning."""

    def __init__(self, every: int, dtype: Optional[str]) -> None:
        self.every, self.dtype = every, dtype
        self._executor: Optional[ThreadPoolExecutor] = None
        self._running: Optional[Future] = None

    def committed(self, step: int, step_dir: Path) -> None:
        self.join()  # one at a time, and finished before the caller prunes
        if export_due(step, self.every):
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eurotron-hf-export")
            self._running = self._executor.submit(self._export, step, Path(step_dir))

    def catch_up(self, step: int, step_dir: Path) -> None:
        """After a resume: export the resumed checkpoint if it is due and has no export yet."""
        if export_due(step, self.every) and not (Path(step_dir) / HF_DIR).is_dir():
            self.committed(step, step_dir)

    def join(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.result()  # _export reports its own failures

    def close(self) -> None:
        """Wait for the export in flight, then end the thread (the trainer's last step)."""
        self.join()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _export(self, step: int, step_dir: Path) -> None:
        from ..convert.to_hf import convert_to_hf

        out = step_dir / HF_DIR
        try:
            # verify=False: the ranks hashed these files moments ago, and verifying would re-read the
            # optimizer state too.
            result = convert_to_hf(step_dir, out, dtype=self.dtype, progress=False, verify=False)
        except Exception as err:  # noqa: BLE001 - any failure is reported the same way, the run goes on
            message = (f"Hugging Face export of step {step} to {out} failed ({type(err).__name__}: {err}); the "
                       f"checkpoint is intact: convert it with eurotron-convert to-hf {step_dir} DIR")
            try:
                (step_dir / ERROR_FILE).write_text(message + "\n")
            except OSError:
                pass  # the checkpoint directory itself is gone; the printed message remains
            print(f"eurotron: error: {message}", file=sys.stderr, flush=True)
            return
        for warning in result.warnings:
            print(f"eurotron: warning: Hugging Face export of step {step}: {warning}", file=sys.stderr, flush=True)
        print(f"eurotron: exported step {step} to {out} ({result.dtype}, Hugging Face format)", flush=True)
