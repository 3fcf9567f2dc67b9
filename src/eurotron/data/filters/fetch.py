"""Build an opt-out snapshot: fetch /robots.txt and /.well-known/tdmrep.json for many origins.

For login nodes with internet access (`eurotron-optout fetch`); training-data preparation reads
only the snapshot. The fetcher is a polite crawler:

* one worker per host at a time, with at least ``delay`` seconds between its requests (origins of
  one host — http and https, several ports — share that budget); up to ``concurrency`` hosts at once;
* a descriptive User-Agent with a contact;
* a connect/read timeout and an overall deadline per request (a server that drips bytes is cut off);
* retries with exponential backoff for no answer, 5xx and 429 (``Retry-After`` honoured, capped);
  never for other 4xx;
* redirects followed up to ``max_redirects`` (RFC 9309 asks for at least five), http(s) only;
* bodies capped at ``max_bytes`` (RFC 9309: at least 500 KiB are parsed), marked ``truncated``;
* resumable: every origin is committed to the SQLite store as soon as it is done, and a rerun
  skips the origins already there (``refetch_failed`` retries those that got no answer or a 5xx).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from ... import __version__
from .snapshot import RESOURCES, Fetched, OriginRecord, SnapshotWriter, utc_now
from .urls import split_origin

DEFAULT_USER_AGENT = (f"eurotron-optout/{__version__} (+https://github.com/eurotron; reads robots.txt and "
                      f"tdmrep.json only, to honour AI-training opt-outs)")
REDIRECTS = (301, 302, 303, 307, 308)
RETRY_AFTER_CAP = 60.0


@dataclass
class FetchSettings:
    user_agent: str = DEFAULT_USER_AGENT
    timeout: float = 10.0
    deadline: float = 30.0
    retries: int = 2
    backoff: float = 1.0
    delay: float = 1.0
    concurrency: int = 32
    max_redirects: int = 5
    max_bytes: int = 512 * 1024


class _Failure(Exception):
    """No HTTP answer: timeout, refused, DNS, TLS ... (message = what the snapshot records)."""


def _connection(scheme: str, host: str, port: Optional[int], timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _get(url: str, s: FetchSettings) -> Tuple[int, Dict[str, str], bytes, bool]:
    """One GET: (status, headers, body up to max_bytes, truncated); raises _Failure."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    started = time.monotonic()
    conn = _connection(parts.scheme, parts.hostname or "", parts.port, s.timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": s.user_agent, "Accept-Encoding": "identity",
                                           "Accept": "text/plain, application/json;q=0.9, */*;q=0.5",
                                           "Connection": "close"})
        response = conn.getresponse()
        chunks: List[bytes] = []
        size = 0
        truncated = False
        while True:
            if time.monotonic() - started > s.deadline:
                raise _Failure(f"timeout: no complete answer within {s.deadline:g} s")
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size >= s.max_bytes:
                truncated = size > s.max_bytes or bool(response.read(1))
                break
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, b"".join(chunks)[:s.max_bytes], truncated
    except (socket.timeout, TimeoutError):
        raise _Failure(f"timeout after {s.timeout:g} s") from None
    except ConnectionRefusedError:
        raise _Failure("connection refused") from None
    except socket.gaierror as err:
        raise _Failure(f"dns: {err.strerror or err}") from None
    except ssl.SSLError as err:
        raise _Failure(f"tls: {err.reason or err}") from None
    except (OSError, http.client.HTTPException) as err:
        raise _Failure(f"{type(err).__name__}: {err}") from None
    finally:
        conn.close()


def _retry_after(headers: Dict[str, str], fallback: float) -> float:
    try:
        return min(max(float(headers.get("retry-after", "")), 0.0), RETRY_AFTER_CAP)
    except ValueError:
        return fallback


def fetch_url(url: str, s: FetchSettings, pause: Callable[[], None] = lambda: None) -> Fetched:
    """GET `url` with redirects and retries; `pause()` is called before every request (politeness)."""
    attempt = 0
    while True:
        current, hops = url, 0
        try:
            while True:
                pause()
                status, headers, body, truncated = _get(current, s)
                location = headers.get("location")
                if status not in REDIRECTS or not location:
                    break
                target = urljoin(current, location)
                if urlsplit(target).scheme not in ("http", "https"):
                    return Fetched(utc_now(), None, f"redirect to a non-http URL: {target}", final_url=target)
                hops += 1
                if hops > s.max_redirects:
                    return Fetched(utc_now(), None, f"too many redirects (more than {s.max_redirects})",
                                   final_url=target)
                current = target
        except _Failure as err:
            status, error = None, str(err)
        else:
            error = None
        retry = status is None or status == 429 or status >= 500
        if not retry or attempt >= s.retries:
            if status is None:
                return Fetched(utc_now(), None, error + (f" ({attempt + 1} attempts)" if attempt else ""),
                               final_url=current if current != url else None)
            keep_body = 200 <= status < 300
            return Fetched(utc_now(), status, None, body if keep_body else None,
                           current if current != url else None, truncated and keep_body)
        wait = s.backoff * (2 ** attempt)
        if status is not None:
            wait = _retry_after(headers, wait)
        time.sleep(wait)
        attempt += 1


class _HostClock:
    """At least `delay` seconds between two requests to one host."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.last = 0.0

    def __call__(self) -> None:
        wait = self.last + self.delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last = time.monotonic()


def fetch_origin(origin: str, s: FetchSettings, clock: Optional[Callable[[], None]] = None) -> OriginRecord:
    clock = clock or _HostClock(s.delay)
    record = OriginRecord(origin)
    for name, path in RESOURCES.items():
        setattr(record, name, fetch_url(origin + path, s, clock))
    return record


def needs_refetch(record: OriginRecord) -> bool:
    robots = record.robots
    return robots is None or robots.status is None or robots.status >= 500 or robots.status == 429


def fetch_snapshot(origins: Iterable[str], out_dir: str, s: FetchSettings, refetch_failed: bool = False,
                   description: str = "", progress: Optional[Callable[[OriginRecord], None]] = None) -> Dict[str, int]:
    """Fetch every origin not yet in the snapshot at `out_dir`; returns counts (done, skipped, ...)."""
    writer = SnapshotWriter(out_dir, s.user_agent, description)
    lock = threading.Lock()
    stats: Dict[str, int] = defaultdict(int)
    try:
        done = writer.done()
        by_host: Dict[str, List[str]] = defaultdict(list)
        for origin in sorted(set(origins)):
            if origin in done and not (refetch_failed and needs_refetch(done[origin])):
                stats["skipped"] += 1
                continue
            by_host[split_origin(origin)[1]].append(origin)

        def work(host_origins: List[str]) -> None:
            clock = _HostClock(s.delay)
            for origin in host_origins:
                record = fetch_origin(origin, s, clock)
                with lock:
                    writer.put(record)
                    robots = record.robots
                    stats["fetched"] += 1
                    key = "robots_no_answer" if robots.status is None else f"robots_{robots.status // 100}xx"
                    stats[key] += 1
                    if progress is not None:
                        progress(record)

        with ThreadPoolExecutor(max_workers=max(1, s.concurrency)) as pool:
            for future in as_completed([pool.submit(work, group) for group in by_host.values()]):
                future.result()
    finally:
        writer.close()
    return dict(stats)
