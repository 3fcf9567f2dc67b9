"""eurotron-prepare's work: raw documents → tokenizer → packed token shards + manifest.

Both passes stream the corpus in batches through the stage of ``filters/stage.py`` (in
``num_workers`` processes, results in corpus order): parsing, then — with ``filters.enabled`` —
domain lists, opt-out (robots.txt, TDMRep, from a snapshot), PII scrubbing and dedup keys; the
dedup decisions are taken here, in order. Pass 1 feeds the kept, scrubbed texts to the SentencePiece
trainer (or loads the given tokenizer), so removed documents never shape the vocabulary; pass 2
tokenizes and writes every n-th kept document to the ``eval`` split, the rest to ``train``, and
writes ``report.json`` / ``report.md`` (what was read, removed and why, scrubbed and kept).

Everything is written into a temporary sibling directory that is renamed into place at the end, so
``output_dir`` is either absent, the previous dataset, or complete. Documents that are empty (or
whitespace only) are skipped, counted and reported, never dropped silently; so are bad records
under ``bad_records=skip`` (under ``fail`` the first one stops the run, naming its file and line).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .. import __version__
from ..config import PrepareConfig, to_object
from .bad_records import RecordTally
from ..paths import ensure_writable_dir
from .errors import DataError
from .filters.dedup import lsh_parameters
from .filters.dedup_index import Deduplicator
from .filters.lists import DomainLists
from .filters.pii import PiiScrubber
from .filters.report import REPORT_JSON, REPORT_MD, ReportBuilder, write_reports
from .filters.robots import check_agents, check_semantics
from .filters.stage import BAD_RECORD_POLICIES, BatchResult, StageSettings, effective_policy, uses_snapshot
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_DIR, write_manifest
from .readers import iter_rows
from .shards import dtype_name, token_dtype
from .split_writer import SplitWriter, finish_splits
from .tokenizer import Tokenizer, train_sentencepiece
from .workers import run_stage

TOKENIZER_TYPES = ("sentencepiece", "hf")


def prepare(cfg: PrepareConfig, progress: bool = True) -> Dict[str, Any]:
    """Build the dataset `cfg` (a PrepareConfig or a composed DictConfig) describes in
    `cfg.output_dir`; return its manifest. `progress` shows tqdm bars on a terminal's stderr."""
    cfg = to_object(cfg, PrepareConfig)
    check_config(cfg)
    out = Path(cfg.output_dir).expanduser().resolve()
    check_output(out, cfg.overwrite)
    ensure_writable_dir(out.parent, "output_dir", out, keep_created=False)  # up front, not after the tokenizer is trained
    settings = stage_settings(cfg)
    with staging_dir(out) as tmp:
        started = time.perf_counter()
        tokenizer = build_tokenizer(cfg, settings, tmp / TOKENIZER_DIR, progress)
        tokenizer_s = time.perf_counter() - started
        settings.tokenizer_dir = str(tmp / TOKENIZER_DIR)
        report = ReportBuilder(report_header(cfg, out, settings))
        splits, documents = _write_splits(cfg, settings, tokenizer, tmp, report, progress)
        timing = timing_figures(tokenizer_s, time.perf_counter() - started, splits, documents)
        manifest = write_dataset(cfg, tmp, tokenizer, splits, documents, timing, report)
        move_into_place(tmp, out, cfg.overwrite)
    return manifest


def write_dataset(cfg: PrepareConfig, tmp: Path, tokenizer: Tokenizer, splits: Dict[str, Any],
                  documents: Dict[str, Any], timing: Dict[str, Any], report: ReportBuilder) -> Dict[str, Any]:
    """manifest.json, report.json and report.md into `tmp` (whose splits and tokenizer are written)."""
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
    report_json = report.to_json({
        "splits": {name: {"docs": s["docs"], "tokens": s["tokens"]} for name, s in splits.items()},
        "tokenizer": manifest["tokenizer"], "timing": timing,
    })
    write_reports(tmp, report_json)
    manifest["report"] = {"json": REPORT_JSON, "markdown": REPORT_MD,
                          "removed": {k: v["docs"] for k, v in report_json["removed"].items()}}
    write_manifest(tmp, manifest)
    return manifest


def stage_settings(cfg: PrepareConfig) -> StageSettings:
    snapshot = None
    if uses_snapshot(cfg.filters):
        from .filters.snapshot import resolve_snapshot_path

        snapshot = str(resolve_snapshot_path(cfg.filters.snapshot))
    return StageSettings(filters=cfg.filters, text_field=cfg.source.text_field, bad_records=cfg.bad_records,
                         snapshot=snapshot)


def report_header(cfg: PrepareConfig, out: Path, settings: StageSettings) -> Dict[str, Any]:
    header: Dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "eurotron_version": __version__,
        "output_dir": str(out),
        "source": asdict(cfg.source),
        "bad_records": cfg.bad_records,
        "num_workers": cfg.num_workers,
        "filters": asdict(cfg.filters),
    }
    if cfg.filters.enabled:
        header["policy"] = effective_policy(cfg.filters)
        if cfg.filters.dedup.near:
            bands, rows = lsh_parameters(cfg.filters.dedup.threshold, cfg.filters.dedup.num_perm)
            header["dedup_lsh"] = {"bands": bands, "rows": rows}
    if settings.snapshot is not None:
        from .filters.snapshot import SnapshotStore

        store = SnapshotStore(settings.snapshot)
        header["snapshot"] = store.summary()
        store.close()
    return header


def timing_figures(tokenizer_s: float, total_s: float, splits: Dict[str, Any], documents: Dict[str, Any]) -> Dict[str, float]:
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
def staging_dir(out: Path) -> Iterator[Path]:
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
def check_config(cfg: PrepareConfig) -> None:
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
    if cfg.num_workers < 0:
        problems.append(f"num_workers={cfg.num_workers}: must be 0 (this process) or a number of worker processes")
    if cfg.bad_records not in BAD_RECORD_POLICIES:
        problems.append(f"bad_records={cfg.bad_records!r}: must be one of {', '.join(BAD_RECORD_POLICIES)}")
    if cfg.filters.enabled:
        problems += _filter_problems(cfg)
    if problems:
        raise DataError("invalid prepare config:\n  " + "\n  ".join(problems))


def _filter_problems(cfg: PrepareConfig) -> list:
    f, problems = cfg.filters, []
    for check in (lambda: effective_policy(f), lambda: PiiScrubber(f.pii.kinds),
                  lambda: DomainLists(f.block_domains, f.allow_domains),
                  lambda: f.dedup.near and lsh_parameters(f.dedup.threshold, f.dedup.num_perm)):
        try:
            check()
        except DataError as err:
            problems.append(str(err))
    if f.dedup.near and f.dedup.shingle_words < 1:  # num_perm: lsh_parameters above
        problems.append(f"filters.dedup.shingle_words={f.dedup.shingle_words}: must be >= 1 (words per shingle; 5 is usual)")
    if uses_snapshot(f):
        if not f.snapshot:
            problems.append("filters.snapshot is not set: the opt-out filter decides from a snapshot (build one "
                            "with `eurotron-optout fetch`), or turn it off with filters.optout.robots=false "
                            "filters.optout.tdmrep=false")
        if f.optout.robots and not f.optout.agents:
            problems.append("filters.optout.agents is empty: list the crawlers whose robots.txt rules count")
        if f.optout.robots:
            for check in (lambda: check_semantics(f.optout.robots_semantics), lambda: check_agents(f.optout.agents)):
                try:
                    check()
                except DataError as err:
                    problems.append(str(err))
    return problems


def check_output(out: Path, overwrite: bool) -> None:
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


def move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    check_output(out, overwrite)  # again: something may have appeared there meanwhile
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


# --------------------------------------------------------------------------------------- tokenizer
def _progress(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, nothing in a log file.
    return tqdm(desc=desc, unit=" docs", file=sys.stderr, disable=None, mininterval=1.0)


def _stream(cfg: PrepareConfig, settings: StageSettings, progress: bool, desc: str) -> Iterator[BatchResult]:
    """The stage's results for the whole source, in order, with a progress bar."""
    bar = _progress(progress, desc)
    results = run_stage(settings, iter_rows(cfg.source), cfg.num_workers)
    try:
        for count, result in results:
            if bar is not None:
                bar.update(count)
            yield result
    finally:
        results.close()  # stops the worker processes now, also when the caller stops early
        if bar is not None:
            bar.close()


def source_name(cfg: PrepareConfig) -> str:
    return f"{cfg.source.type}:{cfg.source.path or ''}"


Decided = Iterator[Tuple[BatchResult, List[Optional[str]]]]


def decided_batches(cfg: PrepareConfig, settings: StageSettings, progress: bool, desc: str) -> Decided:
    """(stage result, dedup verdict per candidate) for the whole source, in order: one process decides."""
    dedup = Deduplicator(cfg.filters.dedup.exact, cfg.filters.dedup.near) if cfg.filters.enabled else None
    stream = _stream(cfg, settings, progress, desc)
    try:
        for result in stream:
            yield result, (dedup.decide(result.keys) if dedup is not None else [None] * len(result.candidates))
    finally:
        stream.close()


def _training_texts(batches: Decided, tally: RecordTally) -> Iterator[str]:
    """The texts pass 2 would keep (filtered, scrubbed, deduplicated), for tokenizer training."""
    try:
        for result, verdicts in batches:
            tally.add(result.kinds, result.where)
            for text, verdict in zip(result.texts, verdicts):
                if verdict is None:
                    yield text
        tally.finished = True
    except Exception as err:
        tally.failure = err  # SentencePiece's trainer swallows it; build_tokenizer raises it again
        raise
    finally:
        batches.close()


def build_tokenizer(cfg: PrepareConfig, settings: StageSettings, out_dir: Path, progress: bool,
                    batches: Optional[Callable[[], Decided]] = None) -> Tokenizer:
    """Load the given tokenizer, or train SentencePiece on the kept texts of `batches()` (default: this
    process's own pass over the source), in corpus order, up to tokenizer.max_training_chars."""
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
    tally = RecordTally()
    texts = _training_texts(batches() if batches else decided_batches(cfg, settings, progress, "tokenizer training"),
                            tally)
    try:
        return train_sentencepiece(texts, out_dir, tok.vocab_size, tok.model_type, tok.max_training_chars)
    except DataError as err:
        if tally.failure is not None:  # the reader's own error (an unreadable file …)
            raise tally.failure from None
        # The whole source read and no text: say what the records were (bad JSON …), not just "empty".
        raise (tally.no_documents_error(source_name(cfg)) if tally.finished else None) or err from None
    finally:
        texts.close()  # stops the workers when the trainer had enough characters


# ------------------------------------------------------------------------------------------ shards
def _write_splits(cfg: PrepareConfig, settings: StageSettings, tokenizer: Tokenizer, root: Path,
                  report: ReportBuilder, progress: bool):
    writer = SplitWriter(root, cfg.eval_every_nth_document, tokenizer.vocab_size, cfg.shard_tokens, report)
    for result, verdicts in decided_batches(cfg, settings, progress, "tokenizing"):
        writer.add(result, verdicts)
    shards = writer.close()
    return finish_splits(root, shards, writer.counts, report, source_name(cfg), cfg.filters.enabled)
