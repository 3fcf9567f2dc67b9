"""`eurotron-optout fetch` against HTTP servers on 127.0.0.1: 200, 404, 500, timeout, redirects,
retries, the User-Agent, politeness and resuming. Nothing leaves the loopback interface."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eurotron.cli.optout import main as optout_main
from eurotron.data.filters.fetch import FetchSettings, fetch_snapshot, fetch_url
from eurotron.data.filters.snapshot import SnapshotStore

TDMREP = json.dumps([{"location": "/", "tdm-reservation": 1}])


class Site:
    """One origin: a ThreadingHTTPServer on 127.0.0.1 with a route table path → (status, headers, body)."""

    def __init__(self, routes, sleep=0.0):
        self.routes, self.sleep, self.requests = routes, sleep, []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                site.requests.append((self.path, self.headers.get("User-Agent"), time.monotonic()))
                route = site.routes.get(self.path, (404, {}, b"not found"))
                if route == "sleep":
                    time.sleep(site.sleep)
                    route = (200, {}, b"User-agent: *\nDisallow: /\n")
                if callable(route):
                    route = route()
                status, headers, body = route
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites():
    made = []

    def make(routes, sleep=0.0):
        made.append(Site(routes, sleep))
        return made[-1]

    yield make
    for site in made:
        site.close()


FAST = dict(timeout=0.4, deadline=2.0, retries=1, backoff=0.01, delay=0.0, concurrency=4)


def test_fetch_cases(sites, tmp_path):
    flaky_calls = []

    def flaky():
        flaky_calls.append(1)
        return (503, {"Retry-After": "0"}, b"busy") if len(flaky_calls) == 1 else (200, {}, b"User-agent: *\nAllow: /\n")

    ok = sites({"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: GPTBot\nDisallow: /\n"),
                "/.well-known/tdmrep.json": (200, {}, TDMREP.encode())})
    missing = sites({})
    broken = sites({"/robots.txt": (500, {}, b"oops"), "/.well-known/tdmrep.json": (500, {}, b"oops")})
    slow = sites({"/robots.txt": "sleep"}, sleep=1.5)
    moved = sites({"/robots.txt": (301, {"Location": "/real-robots.txt"}, b""),
                   "/real-robots.txt": (200, {}, b"User-agent: *\nDisallow: /x\n")})
    looping = sites({"/robots.txt": (302, {"Location": "/robots.txt"}, b"")})
    retried = sites({"/robots.txt": flaky})
    settings = FetchSettings(user_agent="eurotron-test/1.0 (+mailto:test@example.eu)", **FAST)
    stats = fetch_snapshot([s.origin for s in (ok, missing, broken, slow, moved, looping, retried)],
                           str(tmp_path / "snap"), settings)
    store = SnapshotStore(tmp_path / "snap")
    got = {s.origin: store.get(s.origin) for s in (ok, missing, broken, slow, moved, looping, retried)}

    assert got[ok.origin].robots.status == 200 and got[ok.origin].robots.body.startswith(b"User-agent: GPTBot")
    assert json.loads(got[ok.origin].tdmrep.body) == json.loads(TDMREP)
    assert got[missing.origin].robots.status == 404 and got[missing.origin].robots.body is None
    assert got[broken.origin].robots.status == 500
    assert len([r for r in broken.requests if r[0] == "/robots.txt"]) == 2  # retried once
    assert got[slow.origin].robots.status is None and got[slow.origin].robots.error.startswith("timeout")
    assert got[moved.origin].robots.status == 200
    assert got[moved.origin].robots.final_url == moved.origin + "/real-robots.txt"
    assert got[looping.origin].robots.status is None and "too many redirects" in got[looping.origin].robots.error
    assert len(looping.requests) >= 6  # at least five redirects followed (RFC 9309)
    assert got[retried.origin].robots.status == 200 and len(flaky_calls) == 2
    assert all(ua == settings.user_agent for site in (ok, moved) for _, ua, _ in site.requests)
    assert stats["fetched"] == 7 and stats["robots_2xx"] == 3
    assert store.summary()["origins"] == 7 and store.meta["user_agent"] == settings.user_agent
    store.close()

    # The snapshot drives the filter: GPTBot may not fetch anything at `ok`, TDM is reserved there.
    from eurotron.data.filters.optout import OptOutFilter
    from eurotron.data.filters.robots import resolve_policy
    from eurotron.data.filters.urls import parse_url

    flt = OptOutFilter(SnapshotStore(tmp_path / "snap"), ["GPTBot"], True, True, True, resolve_policy("apertus", {}))
    assert flt.check(ok.origin + "/a", parse_url(ok.origin + "/a")).reason == "robots"
    assert flt.check(moved.origin + "/a", parse_url(moved.origin + "/a")).reason is None
    assert flt.check(slow.origin + "/a", parse_url(slow.origin + "/a")).robots_case == "5xx"


def test_politeness_and_resume(sites, tmp_path):
    a = sites({"/robots.txt": (200, {}, b"User-agent: *\nAllow: /\n")})
    b = sites({"/robots.txt": (500, {}, b"down")})
    settings = FetchSettings(**{**FAST, "delay": 0.15, "retries": 0})
    fetch_snapshot([a.origin, b.origin], str(tmp_path / "snap"), settings)
    # Both origins are on host 127.0.0.1: one request at a time, `delay` apart.
    times = sorted(t for site in (a, b) for _, _, t in site.requests)
    assert len(times) == 4 and min(y - x for x, y in zip(times, times[1:])) >= 0.14
    # A rerun skips what is done; --refetch-failed retries the 5xx origin only.
    again = fetch_snapshot([a.origin, b.origin], str(tmp_path / "snap"), settings)
    assert again == {"skipped": 2} and len(a.requests) == 2
    b.routes["/robots.txt"] = (200, {}, b"User-agent: *\nDisallow: /\n")
    retried = fetch_snapshot([a.origin, b.origin], str(tmp_path / "snap"), settings, refetch_failed=True)
    assert retried["skipped"] == 1 and retried["fetched"] == 1
    assert SnapshotStore(tmp_path / "snap").get(b.origin).robots.status == 200


def test_fetch_url_limits(sites):
    big = sites({"/robots.txt": (200, {}, b"#" * 5000), "/away": (302, {"Location": "ftp://elsewhere/robots.txt"}, b"")})
    settings = FetchSettings(**{**FAST, "max_bytes": 1000})
    fetched = fetch_url(big.origin + "/robots.txt", settings)
    assert fetched.status == 200 and len(fetched.body) == 1000 and fetched.truncated
    refused = fetch_url("http://127.0.0.1:9/robots.txt", FetchSettings(**{**FAST, "retries": 0}))
    assert refused.status is None and refused.error
    away = fetch_url(big.origin + "/away", settings)
    assert away.status is None and "non-http" in away.error


def test_cli_fetch_check_and_export(sites, tmp_path, capsys):
    site = sites({"/robots.txt": (200, {}, b"User-agent: CCBot\nDisallow: /private/\n")})
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": "t", "url": f"{site.origin}/{p}"})
                                                for p in ("a", "private/b")) + "\n{broken\n")
    optout_main(["fetch", "--out", str(tmp_path / "snap"), "--source-path", str(tmp_path / "c.jsonl"),
                 "--delay", "0", "--timeout", "1", "--retries", "0", "--contact", "ops@example.eu", "--quiet"])
    out = capsys.readouterr().out
    assert "fetched 1" in out and "records without a usable URL 1" in out
    assert site.requests[0][1].endswith("contact: ops@example.eu")
    optout_main(["check", "--snapshot", str(tmp_path / "snap"), f"{site.origin}/a", f"{site.origin}/private/b"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("keep: no opt-out [robots.txt: ok, tdmrep.json: absent]")
    assert "REMOVE: disallowed for CCBot, CCBot/2.0, CCBot/1.0" in lines[1]
    optout_main(["export", "--snapshot", str(tmp_path / "snap"), "--out", str(tmp_path / "plain")])
    assert SnapshotStore(tmp_path / "plain").kind == "jsonl"
    assert SnapshotStore(tmp_path / "plain").get(site.origin).robots.status == 200
    with pytest.raises(SystemExit) as info:
        optout_main(["fetch", "--out", str(tmp_path / "x")])
    assert info.value.code == 2 and "nothing to fetch" in capsys.readouterr().err
