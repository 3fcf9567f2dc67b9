"""``manifest.json``: what eurotron-prepare wrote, and what the loader trusts about it.

Layout of a prepared dataset directory::

    manifest.json         this file (format, source, tokenizer, splits → shards with checksums)
    tokenizer/            the tokenizer (eurotron + transformers readable)
    train/train_00000.bin train/train_00000.idx ...
    eval/eval_00000.bin   eval/eval_00000.idx ...   (when eval_every_nth_document > 0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from .errors import DataError

MANIFEST_FILE = "manifest.json"
FORMAT = "eurotron-tokens"
FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"


def read_manifest(path: Path | str) -> Dict[str, Any]:
    """The manifest of the dataset directory `path`, after checking it is one this eurotron reads."""
    root = Path(path)
    file = root / MANIFEST_FILE
    if not file.is_file():
        what = "does not exist" if not root.exists() else f"has no {MANIFEST_FILE}"
        raise DataError(
            f"data.path={path}: the directory {what}; point data.path at a directory written by "
            f"eurotron-prepare (e.g. `eurotron-prepare output_dir={path}`)"
        )
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{file} is not valid JSON ({err}); re-run eurotron-prepare with overwrite=true") from err
    if manifest.get("format") != FORMAT:
        raise DataError(f"{file} is not a eurotron token dataset manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{file} has format_version={manifest.get('format_version')}; this eurotron reads "
            f"{FORMAT_VERSION}. Re-run eurotron-prepare with overwrite=true"
        )
    return manifest


def write_manifest(path: Path | str, manifest: Dict[str, Any]) -> Path:
    file = Path(path) / MANIFEST_FILE
    file.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return file
