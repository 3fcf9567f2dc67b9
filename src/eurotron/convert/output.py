"""Where the converters write: a staging directory renamed into place, and progress bars on stderr."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional

from ..paths import ensure_writable_dir
from .errors import ConvertError


@contextlib.contextmanager
def staged_output_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty sibling ``.<name>.tmp-<pid>`` directory; rename it to ``out_dir`` when the block
    succeeds, delete it when it fails, so a crash never leaves a half-written output that looks complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConvertError(f"{out_dir} exists and is not empty; choose a new directory or pass --overwrite")
    ensure_writable_dir(out_dir.parent, "output directory", out_dir)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def progress_bar(total: int, desc: str, enabled: Optional[bool] = True, unit: str = "B"):
    """A tqdm bar on stderr counting bytes (``enabled=None``: only on a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, disable=None if enabled is None else not enabled, mininterval=0.5,
                dynamic_ncols=True)
