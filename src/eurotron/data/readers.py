"""Stream raw documents from JSONL, Parquet, Hugging Face `datasets` or the shipped demo corpus.

`iter_documents(source)` is a generator: it holds one line (JSONL) or one record batch (Parquet,
`datasets`) at a time, so a corpus of any size streams through in bounded memory. Every document
comes out as a dict whose ``"text"`` key holds the text (read from ``source.text_field``); all other
fields of the record (url, lang, date, ...) are passed through unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..config import SourceConfig
from ..paths import DEMO_CORPUS
from .errors import DataError

SOURCE_TYPES = ("jsonl", "parquet", "hf", "demo")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
# Rows per Parquet / `datasets` record batch: bounds memory whatever the corpus size.
BATCH_ROWS = 1024

Document = Dict[str, Any]


def iter_documents(source: SourceConfig) -> Iterator[Document]:
    """Yield the documents of `source` one by one (see the module docstring for their shape)."""
    if source.type == "jsonl":
        return _iter_jsonl(_files(source, JSONL_SUFFIXES), source.text_field)
    if source.type == "parquet":
        return _iter_parquet(_files(source, PARQUET_SUFFIXES), source.text_field)
    if source.type == "hf":
        return _iter_hf(source)
    if source.type == "demo":
        if not DEMO_CORPUS.is_file():
            raise DataError(
                f"the demo corpus {DEMO_CORPUS} is missing from this installation; reinstall eurotron "
                f"from a full checkout, or set source.type=jsonl source.path=/path/to/corpus.jsonl"
            )
        return _iter_jsonl([DEMO_CORPUS], source.text_field)
    raise DataError(f"source.type={source.type!r}: must be one of {', '.join(SOURCE_TYPES)}")


# --------------------------------------------------------------------------------------- helpers
def _files(source: SourceConfig, suffixes: Sequence[str]) -> List[Path]:
    """The file `source.path` names, or the matching files of the directory it names, sorted."""
    if not source.path:
        raise DataError(f"source.path is not set; source.type={source.type} needs a file or directory")
    path = Path(source.path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(tuple(suffixes)))
        if not found:
            raise DataError(
                f"source.path={source.path}: the directory holds no {' / '.join(suffixes)} files "
                f"for source.type={source.type}"
            )
        return found
    raise DataError(f"source.path={source.path}: no such file or directory")


def _missing_field(where: str, field: str, available: Sequence[str]) -> DataError:
    return DataError(
        f"{where}: no text field {field!r}; available fields: {', '.join(map(str, available)) or '(none)'}. "
        f"Set source.text_field to the field that holds the document text"
    )


def _document(record: Dict[str, Any], field: str, where: str) -> Document:
    """The record with its text under "text", after checking the text is there and is a string."""
    if field not in record:
        raise _missing_field(where, field, list(record))
    text = record[field]
    if not isinstance(text, str):
        raise DataError(
            f"{where}: field {field!r} (source.text_field) holds a {type(text).__name__}, not a string"
        )
    if field == "text":
        return record
    doc = {key: value for key, value in record.items() if key != field}
    doc["text"] = text
    return doc


# ------------------------------------------------------------------------------------------ JSONL
def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig: a byte-order mark some Windows tools write is not part of the first record.
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, "r", encoding="utf-8-sig")


def _iter_jsonl(files: Sequence[Path], field: str) -> Iterator[Document]:
    for path in files:
        with _open_text(path) as handle:
            line_no = 0
            while True:
                try:
                    line = handle.readline()
                except (UnicodeDecodeError, OSError, EOFError) as err:
                    raise DataError(f"{path}:{line_no + 1}: cannot read the file ({err})") from err
                if not line:
                    break
                line_no += 1
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: malformed JSON line ({err.msg} at column {err.colno})") from err
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
                yield _document(record, field, where)


# ---------------------------------------------------------------------------------------- Parquet
def _iter_parquet(files: Sequence[Path], field: str) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from err
        names = parquet.schema_arrow.names
        if field not in names:
            raise _missing_field(str(path), field, names)
        kind = parquet.schema_arrow.field(field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{path}: column {field!r} (source.text_field) has type {kind}, not string")
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            for record in batch.to_pylist():
                row += 1
                yield _document(record, field, f"{path}: row {row}")


# ------------------------------------------------------------------------------ Hugging Face datasets
_BUILDER_BY_SUFFIX = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".parquet": "parquet", ".csv": "csv", ".txt": "text",
}


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return path.is_dir() and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def _builder_for(path: Path) -> Optional[str]:
    for suffix, builder in _BUILDER_BY_SUFFIX.items():
        if path.name.endswith(suffix):
            return builder
    return None


def _iter_hf(source: SourceConfig) -> Iterator[Document]:
    if not source.path:
        raise DataError("source.path is not set; source.type=hf needs a dataset name or a local path")
    path = Path(source.path).expanduser()
    if _is_saved_dataset(path):
        return _iter_saved_dataset(path, source)
    return _iter_streaming_dataset(path, source)


def _iter_saved_dataset(path: Path, source: SourceConfig) -> Iterator[Document]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if source.split not in loaded:
            raise DataError(
                f"source.path={path}: no split {source.split!r}; available splits: "
                f"{', '.join(loaded)}. Set source.split"
            )
        loaded = loaded[source.split]
    if source.text_field not in loaded.column_names:
        raise _missing_field(str(path), source.text_field, loaded.column_names)
    row = 0
    # Dataset.iter reads memory-mapped Arrow batches; the corpus itself is never loaded.
    for batch in loaded.iter(batch_size=BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            row += 1
            yield _document(dict(zip(columns, values)), source.text_field, f"{path}: row {row}")


def _iter_streaming_dataset(path: Path, source: SourceConfig) -> Iterator[Document]:
    import datasets

    kwargs: Dict[str, Any] = {"split": source.split, "streaming": True}
    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            raise DataError(
                f"source.path={path}: cannot tell the format from the file name; use .jsonl, .json, "
                f".parquet, .csv or .txt, or source.type=jsonl|parquet"
            )
        args: tuple = (builder,)
        kwargs["data_files"] = {source.split: str(path)}
    elif path.is_dir():
        args = (str(path),)
    elif path.is_absolute() or source.path.startswith((".", "~")) or source.path.count("/") > 1:
        raise DataError(f"source.path={source.path}: no such file or directory")
    else:
        # A dataset name on the Hugging Face hub (or in the local `datasets` cache).
        args = (source.path,)
    if source.name:
        kwargs["name"] = source.name
    try:
        stream = datasets.load_dataset(*args, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise DataError(f"source.path={source.path}: cannot open with `datasets` ({err})") from err
    return _iter_stream(stream, source, str(path))


def _iter_stream(stream: Any, source: SourceConfig, where: str) -> Iterator[Document]:
    for row, record in enumerate(stream, start=1):
        yield _document(dict(record), source.text_field, f"{where}: row {row}")
