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
