"""The opt-out snapshot: what each origin's robots.txt and tdmrep.json said, and when.

Opt-out decisions during eurotron-prepare come only from a snapshot on disk, never from the live
web, so a run is reproducible and auditable. A snapshot is a directory::

    snapshot.json     format, created/updated times, the User-Agent and tool that fetched it
    origins.sqlite    one row per origin (written by `eurotron-optout fetch`; scales to millions)
    origins.jsonl     or: one JSON object per origin (the shipped demo, `eurotron-optout export`)

Each origin holds one fetch result per resource (``robots`` = /robots.txt, ``tdmrep`` =
/.well-known/tdmrep.json)::

    {"origin": "https://www.example.eu",
     "robots": {"status": 200, "fetched": "2025-01-15T10:00:00Z", "final_url": "...", "body": "User-agent: ..."},
     "tdmrep": {"status": 404, "fetched": "2025-01-15T10:00:01Z"}}

``status`` is the HTTP status of the final response after redirects (null when there was none, with
``error`` saying why: timeout, connection refused, too many redirects ...). A body that is not UTF-8
is stored as ``body_base64``. A JSONL snapshot is read into memory; the SQLite one is queried per
origin, so each worker process only holds the origins it has met.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from ...paths import PACKAGE_DIR
from ..errors import DataError

META_FILE = "snapshot.json"
SQLITE_FILE = "origins.sqlite"
JSONL_FILE = "origins.jsonl"
FORMAT = "eurotron-optout-snapshot"
FORMAT_VERSION = 1
RESOURCES = {"robots": "/robots.txt", "tdmrep": "/.well-known/tdmrep.json"}
DEMO_SNAPSHOT = PACKAGE_DIR / "demo_data" / "optout_snapshot"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fetched:
    """One fetch of one resource of an origin."""

    fetched: str
    status: Optional[int] = None
    error: Optional[str] = None
    body: Optional[bytes] = None
    final_url: Optional[str] = None
    truncated: bool = False

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"status": self.status, "fetched": self.fetched}
        if self.error:
            out["error"] = self.error
        if self.final_url:
            out["final_url"] = self.final_url
        if self.truncated:
            out["truncated"] = True
        if self.body is not None:
            try:
                out["body"] = self.body.decode("utf-8")
            except UnicodeDecodeError:
                out["body_base64"] = base64.b64encode(self.body).decode("ascii")
        return out

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str) -> "Fetched":
        if not isinstance(data, dict) or "fetched" not in data:
            raise DataError(f"{where}: a fetch result must be an object with at least 'fetched'")
        body: Optional[bytes] = None
        if data.get("body") is not None:
            body = str(data["body"]).encode("utf-8")
        elif data.get("body_base64") is not None:
            body = base64.b64decode(data["body_base64"])
        status = data.get("status")
        return cls(fetched=str(data["fetched"]), status=None if status is None else int(status),
                   error=data.get("error"), body=body, final_url=data.get("final_url"),
                   truncated=bool(data.get("truncated", False)))


@dataclass
class OriginRecord:
    origin: str
    robots: Optional[Fetched] = None
    tdmrep: Optional[Fetched] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"origin": self.origin}
        for name in RESOURCES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_json()
        return out

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str) -> "OriginRecord":
        if not isinstance(data, dict) or not isinstance(data.get("origin"), str):
            raise DataError(f"{where}: each origin record must be an object with an 'origin' string")
        kwargs = {name: Fetched.from_json(data[name], f"{where} ({name})") for name in RESOURCES
                  if data.get(name) is not None}
        return cls(origin=data["origin"], **kwargs)

    @property
    def fetched(self) -> str:
        """The latest fetch time of its resources."""
        return max((r.fetched for r in (self.robots, self.tdmrep) if r is not None), default="")


def resolve_snapshot_path(value: str) -> Path:
    """`filters.snapshot`: a directory, or "demo" for the snapshot shipped with eurotron."""
    if value == "demo":
        return DEMO_SNAPSHOT
    return Path(value).expanduser().resolve()


# ----------------------------------------------------------------------------------------- reading
class SnapshotStore:
    """Read access to a snapshot directory (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        meta_file = self.path / META_FILE
        if not meta_file.is_file():
            raise DataError(
                f"filters.snapshot={path}: no {META_FILE} there, so it is no opt-out snapshot; build one "
                f"with `eurotron-optout fetch` (or use filters.snapshot=demo for the demo corpus)"
            )
        try:
            self.meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{meta_file} is not valid JSON ({err})") from err
        if self.meta.get("format") != FORMAT or self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{meta_file}: format {self.meta.get('format')!r} version {self.meta.get('format_version')!r}; "
                f"this eurotron reads {FORMAT} version {FORMAT_VERSION}"
            )
        self._db: Optional[sqlite3.Connection] = None
        self._memory: Optional[Dict[str, OriginRecord]] = None
        if (self.path / SQLITE_FILE).is_file():
            uri = f"file:{(self.path / SQLITE_FILE).resolve()}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self.kind = "sqlite"
        elif (self.path / JSONL_FILE).is_file():
            self._memory = dict(_read_jsonl(self.path / JSONL_FILE))
            self.kind = "jsonl"
        else:
            raise DataError(f"filters.snapshot={path}: holds neither {SQLITE_FILE} nor {JSONL_FILE}")

    def get(self, origin: str) -> Optional[OriginRecord]:
        if self._memory is not None:
            return self._memory.get(origin)
        row = self._db.execute("SELECT record FROM origins WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else OriginRecord.from_json(json.loads(row[0]), f"{self.path}: {origin}")

    def __iter__(self) -> Iterator[OriginRecord]:
        if self._memory is not None:
            yield from (self._memory[k] for k in sorted(self._memory))
            return
        for (text,) in self._db.execute("SELECT record FROM origins ORDER BY origin"):
            yield OriginRecord.from_json(json.loads(text), str(self.path))

    def summary(self) -> Dict[str, Any]:
        """What the report records about the snapshot: where, when, how many origins."""
        if self._memory is not None:
            times = [r.fetched for r in self._memory.values() if r.fetched]
            count, first, last = len(self._memory), min(times, default=None), max(times, default=None)
        else:
            count, first, last = self._db.execute(
                "SELECT count(*), min(fetched), max(fetched) FROM origins").fetchone()
        return {"path": str(self.path), "store": self.kind, "created": self.meta.get("created"),
                "updated": self.meta.get("updated"), "user_agent": self.meta.get("user_agent"),
                "description": self.meta.get("description"), "origins": count,
                "fetched_first": first, "fetched_last": last}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _read_jsonl(path: Path) -> Iterator[tuple[str, OriginRecord]]:
    with open(path, "r", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: malformed JSON ({err.msg})") from err
            record = OriginRecord.from_json(data, where)
            yield record.origin, record


# ----------------------------------------------------------------------------------------- writing
class SnapshotWriter:
    """Create or extend (resume) an SQLite snapshot; every `put` is committed at once."""

    def __init__(self, path: Path | str, user_agent: str, description: str = "") -> None:
        from ... import __version__

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta_file = self.path / META_FILE
        now = utc_now()
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != FORMAT:
                raise DataError(f"{meta_file} is not an opt-out snapshot; choose another directory")
            if (self.path / JSONL_FILE).is_file() and not (self.path / SQLITE_FILE).is_file():
                raise DataError(f"{self.path} is a JSONL snapshot; fetch into a new directory")
        else:
            meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": now}
        meta.update({"updated": now, "user_agent": user_agent, "tool": f"eurotron-optout {__version__}"})
        if description:
            meta["description"] = description
        self.meta = meta
        self._write_meta()
        self._db = sqlite3.connect(str(self.path / SQLITE_FILE), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS origins "
                         "(origin TEXT PRIMARY KEY, fetched TEXT NOT NULL, record TEXT NOT NULL)")
        self._db.commit()

    def _write_meta(self) -> None:
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=2) + "\n")
        tmp.replace(self.path / META_FILE)

    def done(self) -> Dict[str, OriginRecord]:
        """The origins already in the store (what a resumed fetch skips)."""
        return {origin: OriginRecord.from_json(json.loads(text), origin)
                for origin, text in self._db.execute("SELECT origin, record FROM origins")}

    def put(self, record: OriginRecord) -> None:
        self._db.execute("INSERT OR REPLACE INTO origins (origin, fetched, record) VALUES (?, ?, ?)",
                         (record.origin, record.fetched, json.dumps(record.to_json(), ensure_ascii=False)))
        self._db.commit()

    def close(self) -> None:
        self.meta["updated"] = utc_now()
        self._write_meta()
        self._db.close()


def export_jsonl(store: SnapshotStore, out: Path | str) -> int:
    """Write the snapshot as a JSONL one (a readable, diffable copy); returns the origin count."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out / JSONL_FILE, "w", encoding="utf-8") as handle:
        for record in store:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    (out / META_FILE).write_text(json.dumps({**store.meta, "exported_from": str(store.path)}, indent=2) + "\n")
    return count
