"""Stream raw documents from JSONL, Parquet, Hugging Face `datasets` or the shipped demo corpus.

`iter_documents(source)` is a generator: it holds one line (JSONL) or one record batch (Parquet,
`datasets`) at a time, so a corpus of any size streams through in bounded memory. Every document
comes out as a dict whose ``"text"`` key holds the text (read from ``source.text_field``); all other
fields of the record (url, lang, date, ...) are passed through unchanged.

Underneath, `iter_rows(source)` yields the raw records — a JSONL line as bytes, a Parquet or
`datasets` row as a dict — with where each came from, and `parse_record` turns one into a document
or raises a `BadRecord` naming its kind (malformed_json, invalid_utf8, invalid_unicode, not_an_object,
missing_text, text_not_string). eurotron-prepare parses in its worker processes and, with
``bad_records=skip``, counts bad records per kind instead of stopping.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import orjson

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
    rows = iter_rows(source)
    return (parse_record(raw, source.text_field, where) for where, raw in rows)


def iter_rows(source: SourceConfig) -> Iterator[Tuple[str, Any]]:
    """Yield ``(where, raw record)`` of `source`: "file:line" or "file: row n", and bytes or a dict."""
    if source.type == "jsonl":
        return _jsonl_rows(_files(source, JSONL_SUFFIXES))
    if source.type == "parquet":
        return _parquet_rows(_files(source, PARQUET_SUFFIXES), source.text_field)
    if source.type == "hf":
        return _hf_rows(source)
    if source.type == "demo":
        if not DEMO_CORPUS.is_file():
            raise DataError(
                f"the demo corpus {DEMO_CORPUS} is missing from this installation; reinstall eurotron "
                f"from a full checkout, or set source.type=jsonl source.path=/path/to/corpus.jsonl"
            )
        return _jsonl_rows([DEMO_CORPUS])
    raise DataError(f"source.type={source.type!r}: must be one of {', '.join(SOURCE_TYPES)}")


def source_files(source: SourceConfig) -> List[Path]:
    """The files `iter_rows(source)` reads, in its order (jsonl, parquet, demo); the staged prepare
    slices a corpus by contiguous ranges of them, so the slices in order are the corpus in order."""
    if source.type == "jsonl":
        return _files(source, JSONL_SUFFIXES)
    if source.type == "parquet":
        return _files(source, PARQUET_SUFFIXES)
    if source.type == "demo":
        iter_rows(source)  # its missing-corpus error
        return [DEMO_CORPUS]
    raise DataError(f"source.type={source.type!r}: the staged prepare reads files (jsonl, parquet, demo); "
                    f"write the dataset out as Parquet or JSONL files, or prepare it in one process")


def iter_file_rows(source: SourceConfig, files: Sequence[Path]) -> Iterator[Tuple[str, Any]]:
    """`iter_rows` over some of `source_files(source)` (a slice)."""
    if source.type == "parquet":
        return _parquet_rows(files, source.text_field)
    return _jsonl_rows(files)


class BadRecord(DataError):
    """One record cannot be read as a document; `kind` names why (for counting)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def plain_jsonl_document(raw: Any) -> Optional[Document]:
    """The common case of `parse_record(raw, "text", ...)` without its checks: a JSONL line that
    orjson reads as an object whose "text" is a string; None for anything else (parse_record then
    accepts it or names what is wrong)."""
    if type(raw) is not bytes:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if type(doc) is dict and type(doc.get("text")) is str else None


def parse_record(raw: Any, field: str, where: str) -> Document:
    """A raw record (a JSONL line's bytes, or a row dict) as a document; raises BadRecord."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            # The fast path; anything orjson refuses (also what json accepts: NaN, huge integers,
            # lone surrogates) goes the slow way, which classifies the error or accepts the line.
            fast = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fast = None
        if isinstance(fast, dict):
            return _document(fast, field, where)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRecord("invalid_utf8", f"{where}: the line is not valid UTF-8 ({err.reason} at byte {err.start})") from None
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadRecord("malformed_json", f"{where}: malformed JSON line ({err.msg} at column {err.colno})") from None
        if not isinstance(raw, dict):
            raise BadRecord("not_an_object", f"{where}: expected a JSON object per line, got {type(raw).__name__}")
        try:  # json (unlike orjson) accepts escapes of lone surrogates, which no UTF-8 text can hold
            json.dumps(raw, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadRecord("invalid_unicode", f"{where}: the record holds a lone surrogate "
                                               f"({err.object[err.start:err.end]!a}), which is no Unicode text") from None
    return _document(raw, field, where)


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
    if glob.has_magic(str(path)):
        # A pattern such as crawl/*.jsonl.gz or data/**/part-*.parquet: the files it matches, sorted.
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"source.path={source.path}: the pattern matches no file")
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
        raise BadRecord("missing_text", str(_missing_field(where, field, list(record))))
    text = record[field]
    if not isinstance(text, str):
        raise BadRecord(
            "text_not_string",
            f"{where}: field {field!r} (source.text_field) holds a {type(text).__name__}, not a string",
        )
    if field == "text":
        return record
    doc = {key: value for key, value in record.items() if key != field}
    doc["text"] = text
    return doc


# ------------------------------------------------------------------------------------------ JSONL
def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _jsonl_rows(files: Sequence[Path]) -> Iterator[Tuple[str, bytes]]:
    """Non-blank lines as bytes; a byte-order mark some Windows tools write is not part of the first.

    A file whose first non-blank line opens a JSON array (``[``) or is a lone ``{`` is no JSONL: it
    is read whole as one JSON value (an array of documents, or one document), see `_whole_json_rows`.
    """
    for path in files:
        name = str(path)
        with _open_binary(path) as handle:
            line_no, first = 0, True
            try:
                for line in handle:
                    line_no += 1
                    if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                        line = line[3:]
                    if line and not line.isspace():
                        if first and (line.lstrip().startswith(b"[") or line.strip() == b"{"):
                            yield from _whole_json_rows(path, line + handle.read())
                            break
                        first = False
                        yield f"{name}:{line_no}", line
            except (OSError, EOFError) as err:
                raise DataError(f"{path}:{line_no + 1}: cannot read the file ({err})") from err


def _whole_json_rows(path: Path, data: bytes) -> Iterator[Tuple[str, bytes]]:
    """The documents of a file holding one JSON value: an array's items (or the object itself), each
    re-encoded as one JSONL line so `parse_record` classifies them exactly as JSONL records. The file
    is parsed in memory (a few times its size): split files of many GB into JSONL instead."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # json also accepts NaN and lone surrogates, which parse_record then classifies
            value = json.loads(data.decode("utf-8", errors="surrogateescape"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = f"line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else "bytes"
            raise DataError(
                f"{path}: read as one JSON value (it does not start with a JSON object per line), but it is "
                f"not valid JSON ({getattr(err, 'msg', err)} at {where}); fix the file, or write one JSON "
                f"object per line (JSONL)"
            ) from None
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items, start=1):
        yield f"{path}: item {i}", json.dumps(item).encode("ascii")


# ---------------------------------------------------------------------------------------- Parquet
def _parquet_rows(files: Sequence[Path], field: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
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
                yield f"{path}: row {row}", record


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


def _hf_rows(source: SourceConfig) -> Iterator[Tuple[str, Dict[str, Any]]]:
    if not source.path:
        raise DataError("source.path is not set; source.type=hf needs a dataset name or a local path")
    path = Path(source.path).expanduser()
    if _is_saved_dataset(path):
        return _saved_dataset_rows(path, source)
    return _streaming_dataset_rows(path, source)


def _saved_dataset_rows(path: Path, source: SourceConfig) -> Iterator[Tuple[str, Dict[str, Any]]]:
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
            yield f"{path}: row {row}", dict(zip(columns, values))


def _streaming_dataset_rows(path: Path, source: SourceConfig) -> Iterator[Tuple[str, Dict[str, Any]]]:
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
    for row, record in enumerate(stream, start=1):
        yield f"{path}: row {row}", dict(record)
