"""Where eurotron finds its Hydra config tree and shipped data."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_CORPUS = PACKAGE_DIR / "demo_data" / "demo_corpus.jsonl"


def config_dir() -> Path:
    """The `configs/` tree: $EUROTRON_CONFIG_DIR, else the checkout's `configs/` (editable install)."""
    override = os.environ.get("EUROTRON_CONFIG_DIR")
    if override:
        return Path(override).resolve()
    checkout = PACKAGE_DIR.parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        "eurotron cannot find its configs/ tree; install from a checkout with `pip install -e .` "
        "or set EUROTRON_CONFIG_DIR=/path/to/eurotron/configs"
    )


def ensure_writable_dir(path: Path, key: str, value: object = None, keep_created: bool = True) -> Path:
    """Create ``path`` if needed and prove it writable with a probe file; a UserError naming ``key`` (set to
    ``value``, default ``path``) if not: checked up front, so a read-only directory fails before any work.
    ``keep_created=False`` removes the directories the check created (a run that fails leaves nothing)."""
    from .errors import UserError

    path = Path(path).expanduser()
    probe = path / f".eurotron-write-test-{os.getpid()}"
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
        if not keep_created:
            for directory in created:  # deepest first
                directory.rmdir()
    except OSError as err:
        where = f"{key}={path}" if value is None else f"{key}={value}: {path}"
        raise UserError(f"{where} is not a writable directory ({err.strerror or err}); choose a directory "
                        f"you can write to, or fix its permissions") from None
    return path
