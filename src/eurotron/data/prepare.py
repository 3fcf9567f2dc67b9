"""eurotron-prepare's work: raw documents → tokenizer → packed token shards + manifest.

Pass 1 streams the corpus into the SentencePiece trainer (or loads the given tokenizer); pass 2
streams it again, tokenizes in batches and writes every n-th kept document to the ``eval`` split,
the rest to ``train``. Everything is written into a temporary sibling directory that is renamed
into place at the end, so ``output_dir`` is either absent, the previous dataset, or complete.
Documents that are empty (or whitespace only) are skipped, counted and reported, never dropped
silently.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List

import numpy as np

from .. import __version__
from ..config import PrepareConfig, to_object
from .errors import DataError
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_DIR, write_manifest
from .readers import iter_documents
from .shards import ShardWriter, dtype_name, token_dtype
from .tokenizer import Tokenizer, train_sentencepiece

TOKENIZER_TYPES = ("sentencepiece", "hf")
# Documents are tokenized in batches of this many documents or characters, whichever comes first.
BATCH_DOCS = 1024
BATCH_CHARS = 8_000_000


def prepare(cfg: PrepareConfig, progress: bool = True) -> Dict[str, Any]:
    """Build the dataset `cfg` (a PrepareConfig or a composed DictConfig) describes in
    `cfg.output_dir`; return its manifest. `progress` shows tqdm bars on a terminal's stderr."""
    cfg = to_object(cfg, PrepareConfig)
    _check_config(cfg)
    out = Path(cfg.output_dir).expanduser().resolve()
    _check_output(out, cfg.overwrite)
    with _staging_dir(out) as tmp:
        started = time.perf_counter()
        tokenizer = _build_tokenizer(cfg, tmp / TOKENIZER_DIR, progress)
        tokenizer_s = time.perf_counter() - started
        splits, documents = _write_splits(cfg, tokenizer, tmp, progress)
        timing = _timing(tokenizer_s, time.perf_counter() - started, splits, documents)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "eurotron_version": __version__,
            "source": asdict(cfg.source),
            "tokenizer_config": asdict(cfg.tokenizer),
            "tokenizer": {"dir": TOKENIZER_DIR, **tokenizer.tokenizer_info(tmp / TOKENIZER_DIR)},
            "shard_tokens": cfg.shard_tokens,
            "eval_every_nth_document": cfg.eval_every_nth_document,
            "dtype": dtype_name(token_dtype(tokenizer.vocab_size)),
            "documents": documents,
            "splits": splits,
            "timing": timing,
        }
        if tokenizer.training_chars is not None:
            manifest["tokenizer"]["training_chars"] = tokenizer.training_chars
        write_manifest(tmp, manifest)
        _move_into_place(tmp, out, cfg.overwrite)
    return manifest


def _timing(tokenizer_s: float, total_s: float, splits: Dict[str, Any], documents: Dict[str, Any]) -> Dict[str, float]:
    shard_s = max(total_s - tokenizer_s, 1e-9)
    tokens = sum(split["tokens"] for split in splits.values())
    return {
        "tokenizer_s": round(tokenizer_s, 3),
        "shards_s": round(shard_s, 3),
        "total_s": round(total_s, 3),
        "docs_per_s": round(documents["kept"] / shard_s, 1),
        "tokens_per_s": round(tokens / shard_s, 1),
    }


@contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` to build in; removed, with any parents it created, on failure."""
    new_parents = [parent for parent in out.parents if not parent.exists()]  # innermost first
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset gets the usual mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in new_parents:
            try:
                parent.rmdir()
            except OSError:
                break
        raise


# ------------------------------------------------------------------------------------------ checks
def _check_config(cfg: PrepareConfig) -> None:
    problems = []
    if cfg.tokenizer.type not in TOKENIZER_TYPES:
        problems.append(f"tokenizer.type={cfg.tokenizer.type!r}: must be one of {', '.join(TOKENIZER_TYPES)}")
    if cfg.tokenizer.type == "hf" and not cfg.tokenizer.path:
        problems.append("tokenizer.path is not set: tokenizer.type=hf needs a local tokenizer directory")
    if cfg.shard_tokens <= 0:
        problems.append(f"shard_tokens={cfg.shard_tokens}: must be positive")
    if cfg.eval_every_nth_document < 0 or cfg.eval_every_nth_document == 1:
        problems.append(
            f"eval_every_nth_document={cfg.eval_every_nth_document}: must be 0 (no eval split) or >= 2 "
            f"(1 would leave no training documents)"
        )
    if not cfg.output_dir:
        problems.append("output_dir is not set")
    if problems:
        raise DataError("invalid prepare config:\n  " + "\n  ".join(problems))


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty directory or (with overwrite) a prepared dataset."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"output_dir={out} exists and is not a directory; choose another output_dir")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(
            f"output_dir={out} already exists; set overwrite=true to replace it, or choose another output_dir"
        )
    if not (out / MANIFEST_FILE).is_file():
        raise DataError(
            f"output_dir={out} is not empty and holds no {MANIFEST_FILE}, so it is not a dataset "
            f"eurotron-prepare wrote; overwrite=true only replaces those. Choose another output_dir"
        )


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    _check_output(out, overwrite)  # again: something may have appeared there meanwhile
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


# --------------------------------------------------------------------------------------- tokenizer
def _progress(items: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, nothing in a log file.
    return tqdm(items, desc=desc, unit=" docs", file=sys.stderr, disable=None, mininterval=1.0)


def _build_tokenizer(cfg: PrepareConfig, out_dir: Path, progress: bool) -> Tokenizer:
    tok = cfg.tokenizer
    if tok.type == "hf":
        tokenizer = Tokenizer.from_hf(tok.path)
        tokenizer.save(out_dir)
        return tokenizer
    if tok.path:
        # An existing SentencePiece model (a .model file or a directory holding tokenizer.model).
        given = Path(tok.path).expanduser()
        tokenizer = Tokenizer.load(given) if given.is_dir() else Tokenizer.from_sentencepiece(given)
        tokenizer.save(out_dir)
        return tokenizer
    texts = (doc["text"] for doc in _progress(iter_documents(cfg.source), progress, "tokenizer training")
             if doc["text"].strip())
    return train_sentencepiece(texts, out_dir, tok.vocab_size, tok.model_type, tok.max_training_chars)


# ------------------------------------------------------------------------------------------ shards
def _batches(documents: Iterator[Dict[str, Any]], counts: Counter) -> Iterator[List[str]]:
    """Texts of the non-empty documents in batches; counts what was read, skipped and languages."""
    batch: List[str] = []
    chars = 0
    for doc in documents:
        counts["read"] += 1
        text = doc["text"]
        if not text.strip():
            counts["skipped_empty"] += 1
            continue
        lang = doc.get("lang")
        if isinstance(lang, str):
            counts[f"lang:{lang}"] += 1
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _with_eos(ids: List[List[int]], eos_id: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One flat token array of the documents, each followed by EOS, and the document end offsets."""
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    ends = np.cumsum(lengths)
    flat = np.full(int(ends[-1]), eos_id, dtype=np.int64)
    body = np.ones(len(flat), dtype=bool)
    body[ends - 1] = False
    flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(body.sum()))
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise DataError(f"the tokenizer produced ids outside [0, {vocab_size}); its vocabulary size is wrong")
    return flat, ends


def _write_splits(cfg: PrepareConfig, tokenizer: Tokenizer, root: Path, progress: bool):
    every = cfg.eval_every_nth_document
    names = ["train", "eval"] if every else ["train"]
    writers = {name: ShardWriter(root / name, name, tokenizer.vocab_size, cfg.shard_tokens) for name in names}
    docs = {name: 0 for name in names}
    counts: Counter = Counter()
    kept = 0
    dtype = token_dtype(tokenizer.vocab_size)
    documents = _progress(iter_documents(cfg.source), progress, "tokenizing")
    for texts in _batches(iter(documents), counts):
        flat, ends = _with_eos(tokenizer.encode_batch(texts), tokenizer.eos_id, tokenizer.vocab_size)
        flat = flat.astype(dtype)
        start = 0
        for end in ends.tolist():
            split = "eval" if every and kept % every == every - 1 else "train"
            writers[split].add_document(flat[start:end])
            docs[split] += 1
            kept += 1
            start = end
    splits = {}
    for name, writer in writers.items():
        shards = writer.close()
        splits[name] = {"docs": docs[name], "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    if docs["train"] == 0:
        raise DataError(
            f"source {cfg.source.type}:{cfg.source.path or ''} gave no training documents "
            f"({counts['read']} read, {counts['skipped_empty']} empty); check source.path and source.text_field"
        )
    if every and docs["eval"] == 0:  # fewer documents than eval_every_nth_document
        del splits["eval"]
        shutil.rmtree(root / "eval", ignore_errors=True)
    documents_info = {
        "read": counts["read"],
        "kept": kept,
        "skipped": {"empty": counts["skipped_empty"]},
        "languages": {key[5:]: n for key, n in sorted(counts.items()) if key.startswith("lang:")},
    }
    return splits, documents_info
