"""What the prepare benchmarks do at the end: print the results, save them, clean up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional


def emit_results(results: Dict[str, Any], json_path: Optional[Path], work: Path, keep_work: bool) -> None:
    """Print `results` as JSON, also to `json_path` when given; remove `work` unless asked to keep it."""
    text = json.dumps(results, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
