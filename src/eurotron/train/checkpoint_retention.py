"""Which checkpoints a run dir holds, which to keep, which to resume from, and what a fresh start does
with an old run's files.

Checkpoints are ordered by the step number parsed from ``step_<N>`` (never by name: a hand-copied
``step_12`` must not sort before ``step_00000008``). Pruning never removes the checkpoint ``latest``
names nor the newest complete one.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .checkpoint_errors import CheckpointError, CorruptCheckpointError

LATEST = "latest"
STEP_PREFIX = "step_"
TRAINER_FILE = "trainer.json"
PREVIOUS_DIR = "previous"
# What a fresh start moves out of the way (the loss curve is redrawn from metrics.jsonl).
OLD_RUN_FILES = ("checkpoints", "metrics.jsonl", "loss_curve.png", "goodput.json")  # goodput.GOODPUT_FILE
_STEP_NAME = re.compile(rf"^{STEP_PREFIX}(\d+)$")


def parse_step(name: str) -> Optional[int]:
    match = _STEP_NAME.match(name)
    return int(match.group(1)) if match else None


def complete_checkpoints(root: Path) -> List[Tuple[int, Path]]:
    """(step, dir) of every complete step directory under ``root``, oldest step first."""
    if not Path(root).is_dir():
        return []
    found = [(parse_step(p.name), p) for p in Path(root).iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None and (p / TRAINER_FILE).exists())


def latest_name(root: Path) -> Optional[str]:
    pointer = Path(root) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def prune(root: Path, keep_last: int) -> List[Path]:
    """Delete complete checkpoints beyond the ``keep_last`` newest steps, sparing `latest`'s target."""
    ckpts = complete_checkpoints(root)
    protected = {latest_name(root)} | ({ckpts[-1][1].name} if ckpts else set())
    doomed = [p for _, p in ckpts[: max(len(ckpts) - keep_last, 0)] if p.name not in protected]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def holds_old_run(run_dir: Path) -> List[str]:
    """The files of an earlier run in ``run_dir`` that a fresh start would otherwise mix with or reuse."""
    root = Path(run_dir) / "checkpoints"
    found = [p.name for p in sorted(root.glob(f"{STEP_PREFIX}*"))] if root.is_dir() else []
    if (root / LATEST).exists():
        found.append(LATEST)
    return [f"checkpoints/{n}" for n in found] + [n for n in OLD_RUN_FILES[1:] if (Path(run_dir) / n).exists()]


def refuse_fresh_start(run_dir: Path) -> None:
    """checkpoint.resume=never: never train over (and later prune) an earlier run's checkpoints."""
    found = [f for f in holds_old_run(run_dir) if f.startswith("checkpoints/")]
    if found:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise CheckpointError(
            f"run_dir={run_dir} already holds checkpoints ({shown}) and checkpoint.resume=never would start "
            f"over them. Use checkpoint.resume=auto to continue that run, checkpoint.resume=restart to move "
            f"its checkpoints and metrics to {Path(run_dir) / PREVIOUS_DIR}/<time>/ and start fresh, or "
            f"choose another run_dir"
        )


def archive_old_run(run_dir: Path, now: Callable[[], float] = time.time) -> Optional[Path]:
    """Move an earlier run's checkpoints/ and metrics into ``<run_dir>/previous/<UTC time>/``."""
    present = [n for n in OLD_RUN_FILES if (Path(run_dir) / n).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now()))
    target = Path(run_dir) / PREVIOUS_DIR / stamp
    suffix = 1
    while target.exists():  # two restarts within one second
        target, suffix = Path(run_dir) / PREVIOUS_DIR / f"{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    for name in present:
        (Path(run_dir) / name).rename(target / name)
    return target


def resume_candidates(root: Path) -> Tuple[List[Path], List[str]]:
    """The checkpoints a resume may use, best first: `latest`'s target, then the complete ones with an
    earlier step, newest first; and the reasons earlier candidates were already ruled out."""
    name = latest_name(root)
    ckpts = complete_checkpoints(root)
    if name is None:  # a crash between the rename and `latest`'s update: the newest complete one
        return [p for _, p in reversed(ckpts)], []
    target, skipped = Path(root) / name, []
    limit = parse_step(name)
    if (target / TRAINER_FILE).exists():
        first = [target]
    else:
        first = []
        skipped.append(f"skipping checkpoint {target.name}: `latest` names it but it is missing or incomplete")
    older = [p for s, p in reversed(ckpts) if p != target and (limit is None or s < limit)]
    return first + older, skipped


def first_verified(candidates: List[Path], verify: Callable[[Path], object],
                   report: Callable[[str], None]) -> Optional[Path]:
    """The first candidate that passes ``verify``; each rejected one is reported with the reason."""
    for path in candidates:
        try:
            verify(path)
            return path
        except CorruptCheckpointError as err:
            report(f"skipping checkpoint {path.name}: {err}")
    return None
