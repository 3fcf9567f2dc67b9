"""eurotron-optout: build and inspect the opt-out snapshot that eurotron-prepare's filters read.

  eurotron-optout fetch --out snapshots/2025-01 --source-type jsonl --source-path crawl/ --contact ops@example.eu
  eurotron-optout fetch --out snapshots/2025-01 https://www.example.eu/page https://other.example.eu
  eurotron-optout fetch --out snapshots/2025-01 --origins origins.txt --refetch-failed   # resume, retry failures
  eurotron-optout check --snapshot snapshots/2025-01 https://www.example.eu/a/page
  eurotron-optout export --snapshot snapshots/2025-01 --out snapshots/2025-01-jsonl

fetch runs where there is internet (a login node); it is polite (one request at a time per host,
--delay seconds apart), retries failures, and resumes: rerun the same command after an interruption.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Tuple

from .common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eurotron-optout", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="fetch robots.txt and tdmrep.json of origins into a snapshot")
    f.add_argument("urls", nargs="*", help="URLs or origins to fetch (besides --origins / --source-path)")
    f.add_argument("--out", required=True, type=Path, help="snapshot directory (created, or resumed)")
    f.add_argument("--origins", type=Path, help="file with one URL or origin per line")
    f.add_argument("--source-type", choices=("jsonl", "parquet", "hf"), default="jsonl")
    f.add_argument("--source-path", help="a dataset: every origin of its documents' URLs is fetched")
    f.add_argument("--url-field", default="url")
    f.add_argument("--user-agent", help="the User-Agent header (default names eurotron-optout)")
    f.add_argument("--contact", help="an e-mail or URL appended to the User-Agent, for site operators")
    f.add_argument("--concurrency", type=int, default=32, help="hosts fetched at once")
    f.add_argument("--delay", type=float, default=1.0, help="seconds between two requests to one host")
    f.add_argument("--timeout", type=float, default=10.0, help="connect/read timeout per request (s)")
    f.add_argument("--deadline", type=float, default=30.0, help="longest a single request may take (s)")
    f.add_argument("--retries", type=int, default=2, help="retries after no answer, 5xx or 429")
    f.add_argument("--backoff", type=float, default=1.0, help="first retry wait (s), doubling")
    f.add_argument("--max-redirects", type=int, default=5)
    f.add_argument("--refetch-failed", action="store_true", help="fetch again origins that got no answer or 5xx")
    f.add_argument("--description", default="", help="free text recorded in snapshot.json")
    f.add_argument("--quiet", action="store_true")

    c = sub.add_parser("check", help="what the opt-out filter decides for URLs, and why")
    c.add_argument("urls", nargs="+")
    c.add_argument("--snapshot", required=True, help='snapshot directory, or "demo"')
    c.add_argument("--agent", action="append", help="agents to check (default: the Apertus list)")
    c.add_argument("--policy", default="apertus")
    c.add_argument("--no-wildcard-group", action="store_true", help="ignore `User-agent: *` groups")
    c.add_argument("--semantics", choices=("rfc9309", "apertus"), default="rfc9309",
                   help="robots.txt read as RFC 9309 specifies, or as Protego (Apertus) reads it")

    e = sub.add_parser("export", help="write a snapshot as readable JSONL (origins.jsonl + snapshot.json)")
    e.add_argument("--snapshot", required=True)
    e.add_argument("--out", required=True, type=Path)
    return p.parse_args(argv)


# -------------------------------------------------------------------------------------------- fetch
def _origins_from_dataset(source_type: str, path: str, url_field: str, counts: Dict[str, int]) -> Iterator[str]:
    from ..config import SourceConfig
    from ..data.filters.urls import BadUrl, parse_url
    from ..data.readers import iter_rows

    for _, raw in iter_rows(SourceConfig(type=source_type, path=path, text_field=url_field)):
        try:
            record = json.loads(raw) if isinstance(raw, (bytes, bytearray)) else raw
            yield parse_url(record.get(url_field)).origin
        except (ValueError, AttributeError, BadUrl):
            counts["records without a usable URL"] = counts.get("records without a usable URL", 0) + 1


def _origins(args: argparse.Namespace, counts: Dict[str, int]) -> Iterable[str]:
    from ..data.errors import DataError
    from ..data.filters.urls import BadUrl, parse_url

    values: List[Tuple[str, str]] = [(url, "command line") for url in args.urls]
    if args.origins:
        if not args.origins.is_file():
            raise DataError(f"--origins {args.origins}: no such file")
        values += [(line.strip(), f"{args.origins}:{n}") for n, line in
                   enumerate(args.origins.read_text().splitlines(), start=1) if line.strip() and not line.startswith("#")]
    origins = set()
    for value, where in values:
        try:
            origins.add(parse_url(value if "://" in value else f"https://{value}").origin)
        except BadUrl as err:
            raise DataError(f"{where}: {value!r} is no http(s) URL or origin ({err})") from None
    if args.source_path:
        origins.update(_origins_from_dataset(args.source_type, args.source_path, args.url_field, counts))
    if not origins:
        raise DataError("nothing to fetch: give URLs, --origins FILE or --source-path DATASET")
    return origins


def _check_numbers(args: argparse.Namespace) -> None:
    """Negative or zero settings would hang, hammer a host or silently do nothing: refuse them."""
    from ..data.errors import DataError

    rules = [("concurrency", 1), ("max_redirects", 0), ("retries", 0)]
    problems = [f"--{key.replace('_', '-')} {getattr(args, key)}: must be >= {least}"
                for key, least in rules if getattr(args, key) < least]
    problems += [f"--{key} {getattr(args, key)}: must be >= 0 seconds" for key in ("delay", "backoff")
                 if not getattr(args, key) >= 0]
    problems += [f"--{key} {getattr(args, key)}: must be > 0 seconds" for key in ("timeout", "deadline")
                 if not getattr(args, key) > 0]
    if problems:
        raise DataError("invalid fetch settings:\n  " + "\n  ".join(problems))


def fetch(args: argparse.Namespace) -> Dict[str, int]:
    from ..data.filters.fetch import DEFAULT_USER_AGENT, FetchSettings, fetch_snapshot

    _check_numbers(args)
    counts: Dict[str, int] = {}
    origins = _origins(args, counts)
    agent = args.user_agent or DEFAULT_USER_AGENT
    if args.contact:
        agent = f"{agent} contact: {args.contact}"
    settings = FetchSettings(user_agent=agent, timeout=args.timeout, deadline=args.deadline, retries=args.retries,
                             backoff=args.backoff, delay=args.delay, concurrency=args.concurrency,
                             max_redirects=args.max_redirects)

    def report(record) -> None:
        if not args.quiet:
            robots, tdm = record.robots, record.tdmrep
            print(f"  {record.origin}: robots.txt {robots.status or robots.error}, "
                  f"tdmrep.json {tdm.status or tdm.error}", file=sys.stderr, flush=True)

    stats = fetch_snapshot(origins, str(args.out), settings, args.refetch_failed, args.description, report)
    stats.update(counts)
    print(f"eurotron-optout: {args.out}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.items())), flush=True)
    return stats


# -------------------------------------------------------------------------------------------- check
def check(args: argparse.Namespace) -> List[dict]:
    from ..config import AI_CRAWLER_AGENTS
    from ..data.filters.optout import OptOutFilter
    from ..data.filters.robots import resolve_policy
    from ..data.filters.snapshot import SnapshotStore, resolve_snapshot_path
    from ..data.filters.urls import BadUrl, parse_url

    store = SnapshotStore(resolve_snapshot_path(args.snapshot))
    policy = resolve_policy(args.policy, {})
    flt = OptOutFilter(store, args.agent or list(AI_CRAWLER_AGENTS), not args.no_wildcard_group, True, True, policy,
                       args.semantics)
    out = []
    for url in args.urls:
        try:
            parsed = parse_url(url)
        except BadUrl as err:
            out.append({"url": url, "error": err.kind})
            print(f"{url}: not checkable ({err.kind}; policy {args.policy}: {policy['bad_url']})")
            continue
        d = flt.check(url, parsed)
        verdict = "REMOVE" if d.reason else "keep"
        why = {"robots": f"disallowed for {', '.join(d.agents)}",
               "robots_policy": f"robots.txt {d.detail}, policy {args.policy} removes",
               "tdmrep": f"TDM rights reserved ({d.detail})",
               "tdmrep_policy": f"tdmrep.json unreadable, policy {args.policy} removes"}.get(d.reason, "no opt-out")
        if d.differs is not None:
            why += f" (robots.txt disallows it only under {d.differs})"
        print(f"{url}: {verdict}: {why} [robots.txt: {d.robots_case}, tdmrep.json: {d.tdmrep_status}]")
        out.append({"url": url, "reason": d.reason, "agents": d.agents, "detail": d.detail, "differs": d.differs})
    return out


def export(args: argparse.Namespace) -> int:
    from ..data.filters.snapshot import SnapshotStore, export_jsonl, resolve_snapshot_path

    count = export_jsonl(SnapshotStore(resolve_snapshot_path(args.snapshot)), args.out)
    print(f"eurotron-optout: wrote {count:,} origins to {args.out}")
    return count


def main(argv=None) -> None:
    args = parse_args(argv)
    command = {"fetch": fetch, "check": check, "export": export}[args.command]
    exit_on_user_error("eurotron-optout", lambda: command(args))


if __name__ == "__main__":
    main()
