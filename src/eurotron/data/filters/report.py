"""report.json and report.md: what a prepare run read, removed (and why), scrubbed and kept.

The report holds the figures the EU training-content summary asks for (`eurotron-summary` turns
reports into its draft): documents and tokens in and out, removals per reason with their top
domains, removals per robots.txt agent, the opt-out protocols honoured with the snapshot's date and
the policy, PII replaced, languages, crawl periods, the largest domains kept, and the documents
whose robots.txt decision depends on the semantics (RFC 9309 or Protego's: `robots_semantics`).
Every count is exact, except top-domain lists over more than `TOP_CAPACITY` distinct hosts (marked
approximate).
Tokens include the EOS that ends each document, as the shards hold them.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from itertools import compress
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .robots import SEMANTICS

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FORMAT = "eurotron-prepare-report"
FORMAT_VERSION = 1
SEMANTICS_SIGNAL = "robots_semantics"
TOP_CAPACITY = 20_000
TOP_SHOWN = 20
EXAMPLES_PER_KIND = 5
SEMANTICS_TEXT = {"rfc9309": "RFC 9309, eurotron's matcher", "apertus": "Protego's decisions, as Apertus filtered"}
REASONS = ("blocklist", "not_allowlisted", "url_policy", "robots", "robots_policy", "tdmrep", "tdmrep_policy",
           "dedup_exact", "dedup_near")
REASON_TEXT = {
    "blocklist": "domain on the block list",
    "not_allowlisted": "domain not on the allow list",
    "url_policy": "no checkable URL, removed by policy",
    "robots": "robots.txt disallows an AI crawler",
    "robots_policy": "robots.txt missing/failed, removed by policy",
    "tdmrep": "TDM rights reserved (TDMRep)",
    "tdmrep_policy": "tdmrep.json unreadable, removed by policy",
    "dedup_exact": "exact duplicate",
    "dedup_near": "near duplicate (MinHash-LSH)",
}


class TopCounter:
    """Documents and tokens per key; beyond 2 x capacity keys, the smallest are dropped (and the
    counts of what remains become lower bounds: `approximate`)."""

    def __init__(self, capacity: int = TOP_CAPACITY) -> None:
        self.capacity = capacity
        self.counts: Dict[str, List[int]] = {}
        self.approximate = False

    def add(self, key: str, tokens: int) -> None:
        entry = self.counts.get(key)
        if entry is None:
            self.counts[key] = [1, tokens]
            if len(self.counts) > 2 * self.capacity:
                self._prune()
        else:
            entry[0] += 1
            entry[1] += tokens

    def add_many(self, keys: Sequence[str], tokens: Sequence[int]) -> None:
        counts = self.counts
        for key, n in zip(keys, tokens):
            entry = counts.get(key)
            if entry is None:
                counts[key] = [1, n]
            else:
                entry[0] += 1
                entry[1] += n
        if len(counts) > 2 * self.capacity:
            self._prune()

    def _prune(self) -> None:
        kept = sorted(self.counts.items(), key=lambda kv: (-kv[1][1], kv[0]))[:self.capacity]
        self.counts = dict(kept)
        self.approximate = True

    def merge(self, later: "TopCounter") -> None:
        counts = self.counts
        for key, (docs, tokens) in later.counts.items():
            entry = counts.get(key)
            if entry is None:
                counts[key] = [docs, tokens]
            else:
                entry[0] += docs
                entry[1] += tokens
        if len(counts) > 2 * self.capacity:
            self._prune()
        self.approximate = self.approximate or later.approximate

    def top(self, k: int = TOP_SHOWN) -> List[Dict[str, Any]]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:k]
        return [{"domain": key, "docs": docs, "tokens": tokens} for key, (docs, tokens) in ranked]

    def __len__(self) -> int:
        return len(self.counts)


class _Period:
    def __init__(self) -> None:
        self.first: Optional[str] = None
        self.last: Optional[str] = None
        self.by_year: Counter = Counter()
        self.undated = 0

    def add_days(self, days: Sequence[Optional[str]]) -> None:
        """`days` as `day_of` gives them (None: undated)."""
        valid = [d for d in days if d is not None]
        self.undated += len(days) - len(valid)
        if not valid:
            return
        first, last = min(valid), max(valid)
        self.first = first if self.first is None or first < self.first else self.first
        self.last = last if self.last is None or last > self.last else self.last
        self.by_year.update(d[:4] for d in valid)

    def merge(self, later: "_Period") -> None:
        for day in (later.first, later.last):
            if day is not None:
                self.first = day if self.first is None or day < self.first else self.first
                self.last = day if self.last is None or day > self.last else self.last
        self.by_year.update(later.by_year)
        self.undated += later.undated

    def to_json(self) -> Dict[str, Any]:
        return {"first": self.first, "last": self.last, "by_year": dict(sorted(self.by_year.items())),
                "undated": self.undated}


def day_of(date: Any) -> Optional[str]:
    """"YYYY-MM-DD" or "YYYY-MM" from the start of an ISO date, else None."""
    return _day(date[:10]) if isinstance(date, str) else None


@functools.lru_cache(maxsize=4096)  # a corpus has few distinct days; the answer depends on these 10 characters only
def _day(date: str) -> Optional[str]:
    if len(date) < 7 or date[4] != "-" or not date[:4].isdigit() or not date[5:7].isdigit():
        return None
    if len(date) >= 10 and date[7] == "-" and date[8:10].isdigit():
        return date[:10]
    return date[:7]


class ReportBuilder:
    def __init__(self, header: Dict[str, Any]) -> None:
        self.header = header
        self.read = 0
        self.bad: Counter = Counter()
        self.bad_examples: Dict[str, List[str]] = {}
        self.empty = 0
        self.totals = {"in": [0, 0, 0], "out": [0, 0, 0]}  # documents, tokens, characters
        self.removed: Dict[str, List[int]] = {}
        self.removed_domains: Dict[str, TopCounter] = {}
        self.robots_agents: Counter = Counter()
        self.details: Dict[str, Counter] = {}
        self.signals: Counter = Counter()
        self.pii: Counter = Counter()
        self.pii_docs = 0
        self.languages = {"in": Counter(), "out": Counter()}
        self.periods = {"in": _Period(), "out": _Period()}
        self.domains_out = TopCounter()
        self.hosts_in = TopCounter()
        self.with_url = 0

    # ------------------------------------------------------------------------------------ adding
    def add_batch(self, kinds: Sequence[str], where: Sequence[Optional[str]], hosts: Sequence[Optional[str]],
                  langs: Sequence[Any], dates: Sequence[Any], chars: Sequence[int], tokens: Sequence[int],
                  reasons: Sequence[Optional[str]], details: Sequence[Any], pii: Dict[int, Dict[str, int]]) -> None:
        """One batch of records: `kinds` "doc", "empty" or a bad-record kind; for documents, `reasons`
        None (kept) or why it was removed; `pii` the replacements per kept record index."""
        self.read += len(kinds)
        docs = []
        for i, kind in enumerate(kinds):
            if kind == "doc":
                docs.append(i)
            elif kind == "empty":
                self.empty += 1
            else:
                self.bad[kind] += 1
                examples = self.bad_examples.setdefault(kind, [])
                if len(examples) < EXAMPLES_PER_KIND:
                    examples.append(where[i])
        # Per document, once; the kept documents' values are a selection of these.
        domains = [hosts[i] or "(no host)" for i in docs]
        doc_tokens = [tokens[i] for i in docs]
        values = {
            "chars": [chars[i] for i in docs],
            "langs": [langs[i] if isinstance(langs[i], str) and langs[i] else "unknown" for i in docs],
            "days": [day_of(dates[i]) for i in docs],
        }
        self.with_url += sum(1 for i in docs if hosts[i])
        self.hosts_in.add_many(domains, doc_tokens)
        is_kept = [reasons[i] is None for i in docs]
        kept_domains, kept_tokens = list(compress(domains, is_kept)), list(compress(doc_tokens, is_kept))
        self.domains_out.add_many(kept_domains, kept_tokens)
        for side, side_tokens in (("in", doc_tokens), ("out", kept_tokens)):
            picked = values if side == "in" else {k: list(compress(v, is_kept)) for k, v in values.items()}
            total = self.totals[side]
            total[0] += len(side_tokens)
            total[1] += sum(side_tokens)
            total[2] += sum(picked["chars"])
            self.languages[side].update(picked["langs"])
            self.periods[side].add_days(picked["days"])
        for counts in pii.values():
            if counts:
                self.pii.update(counts)
                self.pii_docs += 1
        for i in docs:
            reason = reasons[i]
            if reason is None:
                continue
            counts = self.removed.setdefault(reason, [0, 0, 0])
            counts[0] += 1
            counts[1] += tokens[i]
            counts[2] += chars[i]
            self.removed_domains.setdefault(reason, TopCounter()).add(hosts[i] or "(no host)", tokens[i])
            if reason == "robots":
                self.robots_agents.update(details[i] or ())
            elif details[i]:
                self.details.setdefault(reason, Counter())[str(details[i])] += 1

    def merge(self, later: "ReportBuilder") -> None:
        """Add the counts of `later`, built over the documents that follow this one's in corpus order:
        the result is what one builder fed both in order would hold (top-domain lists: exact up to
        TOP_CAPACITY distinct hosts per part, as in one process)."""
        self.read += later.read
        self.empty += later.empty
        self.bad.update(later.bad)
        for kind, examples in later.bad_examples.items():
            mine = self.bad_examples.setdefault(kind, [])
            mine.extend(examples[:max(EXAMPLES_PER_KIND - len(mine), 0)])
        for side in ("in", "out"):
            self.totals[side] = [a + b for a, b in zip(self.totals[side], later.totals[side])]
            self.languages[side].update(later.languages[side])
            self.periods[side].merge(later.periods[side])
        for reason, counts in later.removed.items():
            mine = self.removed.setdefault(reason, [0, 0, 0])
            self.removed[reason] = [a + b for a, b in zip(mine, counts)]
            self.removed_domains.setdefault(reason, TopCounter()).merge(later.removed_domains[reason])
        self.robots_agents.update(later.robots_agents)
        for reason, counter in later.details.items():
            self.details.setdefault(reason, Counter()).update(counter)
        self.signals.update(later.signals)
        self.pii.update(later.pii)
        self.pii_docs += later.pii_docs
        self.domains_out.merge(later.domains_out)
        self.hosts_in.merge(later.hosts_in)
        self.with_url += later.with_url

    def signal_counts(self, counts: Dict[str, int]) -> None:
        """Opt-out signals met (documents per robots.txt case, tdmrep.json status, URL kind)."""
        self.signals.update(counts)

    # ----------------------------------------------------------------------------------- results
    def to_json(self, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        tokens_in = self.totals["in"][1]
        removed = {}
        for reason in REASONS:
            if reason not in self.removed:
                continue
            docs, tokens, chars = self.removed[reason]
            entry: Dict[str, Any] = {
                "description": REASON_TEXT[reason], "docs": docs, "tokens": tokens, "chars": chars,
                "token_share": round(tokens / tokens_in, 6) if tokens_in else 0.0,
                "top_domains": self.removed_domains[reason].top(),
            }
            if reason == "robots":
                entry["by_agent"] = dict(self.robots_agents.most_common())
            elif reason in self.details:
                entry["by_" + ("signal" if reason == "tdmrep" else "case")] = dict(sorted(self.details[reason].items()))
            removed[reason] = entry
        signals: Dict[str, Dict[str, int]] = {}
        for key, n in sorted(self.signals.items()):
            group, _, name = key.partition(":")
            if group != SEMANTICS_SIGNAL:
                signals.setdefault(group, {})[name] = n
        report = {
            "format": FORMAT, "format_version": FORMAT_VERSION, **self.header,
            "documents": {"read": self.read, "in": self.totals["in"][0], "out": self.totals["out"][0],
                          "removed": sum(c[0] for c in self.removed.values()),
                          "skipped": {"empty": self.empty, **dict(sorted(self.bad.items()))}},
            "tokens": {"in": tokens_in, "out": self.totals["out"][1],
                       "removed": sum(c[1] for c in self.removed.values())},
            "chars": {"in": self.totals["in"][2], "out": self.totals["out"][2]},
            "removed": removed,
            "bad_input": {"counts": dict(sorted(self.bad.items())), "examples": self.bad_examples},
            "optout_signals": signals,
            "pii": {"replaced": dict(sorted(self.pii.items())), "documents": self.pii_docs},
            "languages": {side: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                          for side, c in self.languages.items()},
            "crawl_period": {side: p.to_json() for side, p in self.periods.items()},
            "domains": {"distinct_in": len(self.hosts_in), "documents_with_url": self.with_url,
                        "approximate": self.domains_out.approximate or self.hosts_in.approximate,
                        "top_out": self.domains_out.top()},
        }
        semantics = self._semantics()
        if semantics:
            report["robots_semantics"] = semantics
        if extra:
            report.update(extra)
        return report

    def _semantics(self) -> Dict[str, Any]:
        """Which robots.txt semantics decided, and on how many documents the other one would not."""
        filters = self.header.get("filters") or {}
        optout = filters.get("optout") or {}
        if not (filters.get("enabled") and optout.get("robots")):
            return {}
        only = {name: self.signals.get(f"{SEMANTICS_SIGNAL}:removed_only_by_{name}", 0) for name in SEMANTICS}
        return {"used": optout.get("robots_semantics", SEMANTICS[0]),
                "documents_decided_differently": sum(only.values()),
                **{f"removed_only_by_{name}": n for name, n in only.items()}}


# ------------------------------------------------------------------------------------------ writing
def write_reports(directory: Path, report: Dict[str, Any]) -> None:
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (directory / REPORT_MD).write_text(render_markdown(report))


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_n(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _domains(entries: Sequence[Dict[str, Any]], k: int = 5) -> str:
    return ", ".join(f"{e['domain']} ({e['docs']})" for e in entries[:k]) or "-"


def render_markdown(report: Dict[str, Any]) -> str:
    docs, tokens = report["documents"], report["tokens"]
    source = report.get("source", {})
    out = [f"# eurotron-prepare report: {report.get('output_dir', '')}", "",
           f"Source: `{source.get('type')}` {source.get('path') or ''}  ",
           f"Created: {report.get('created')} by eurotron {report.get('eurotron_version')}", ""]
    out += ["## Documents and tokens", ""]
    out += _table(["", "documents", "tokens", "characters"], [
        ["read", docs["read"], "", ""],
        ["valid (in)", docs["in"], tokens["in"], report["chars"]["in"]],
        ["removed", docs["removed"], tokens["removed"], ""],
        ["kept (out)", docs["out"], tokens["out"], report["chars"]["out"]],
    ])
    skipped = {k: v for k, v in docs["skipped"].items() if v}
    out += ["Skipped before filtering: " + (", ".join(f"{k} {v:,}" for k, v in skipped.items()) or "none"), ""]
    out += ["## Removed, by reason", ""]
    rows = [[key, entry["description"], entry["docs"], entry["tokens"], _pct(entry["tokens"], tokens["in"]),
             _domains(entry["top_domains"])] for key, entry in report["removed"].items()]
    out += _table(["reason", "what", "documents", "tokens", "of tokens in", "top domains (documents)"], rows) \
        if rows else ["Nothing was removed.", ""]
    robots = report["removed"].get("robots")
    if robots:
        out += ["### robots.txt removals per agent", "",
                "A document counts for every agent whose own group disallows it, and for `*` when the `*` "
                "group (that agents without a group of their own obey) does.", ""]
        out += _table(["agent", "documents"], list(robots["by_agent"].items()))
    for key, entry in report["removed"].items():
        for label in ("by_case", "by_signal"):
            if label in entry:
                out += [f"{key}, {label.replace('_', ' ')}: "
                        + ", ".join(f"{k} {v:,}" for k, v in entry[label].items()), ""]
    filters = report.get("filters") or {}
    if filters.get("enabled"):
        out += _filters_section(report, filters)
    bad = report["bad_input"]
    if bad["counts"]:
        out += ["## Bad input", ""]
        out += _table(["kind", "records", "first examples"],
                      [[k, v, "; ".join(bad["examples"].get(k, []))] for k, v in bad["counts"].items()])
    out += ["## Languages (documents)", ""]
    langs = sorted(set(report["languages"]["in"]) | set(report["languages"]["out"]),
                   key=lambda lang: -report["languages"]["in"].get(lang, 0))
    out += _table(["language", "in", "out"],
                  [[lang, report["languages"]["in"].get(lang, 0), report["languages"]["out"].get(lang, 0)]
                   for lang in langs])
    period = report["crawl_period"]["out"]
    out += ["## Crawl period (kept documents)", ""]
    if period["first"]:
        out += [f"{period['first']} to {period['last']}; per year: "
                + ", ".join(f"{y} {n:,}" for y, n in period["by_year"].items())
                + (f"; undated {period['undated']:,}" if period["undated"] else ""), ""]
    else:
        out += ["No document carries a date.", ""]
    out += ["## Largest domains kept (by tokens)", ""]
    out += _table(["domain", "documents", "tokens"],
                  [[e["domain"], e["docs"], e["tokens"]] for e in report["domains"]["top_out"]])
    return "\n".join(out)


def _filters_section(report: Dict[str, Any], filters: Dict[str, Any]) -> List[str]:
    out = ["## Opt-out", ""]
    snapshot = report.get("snapshot")
    if snapshot:
        out += [f"Snapshot: `{snapshot['path']}` ({snapshot['store']}, {snapshot['origins']:,} origins, "
                f"fetched {snapshot['fetched_first']} to {snapshot['fetched_last']}, created {snapshot['created']})", ""]
    optout = filters.get("optout", {})
    protocols = [name for name, on in (("robots.txt (RFC 9309)", optout.get("robots")),
                                       ("TDMRep (tdmrep.json, headers, HTML meta)", optout.get("tdmrep"))) if on]
    out += ["Protocols honoured: " + (", ".join(protocols) or "none"), ""]
    if optout.get("robots"):
        out += [f"Agents: {', '.join(optout.get('agents', []))}; `User-agent: *` groups "
                + ("count" if optout.get("wildcard_group") else "are ignored"), ""]
    semantics = report.get("robots_semantics")
    if semantics:
        out += [f"robots.txt semantics: `{semantics['used']}` ({SEMANTICS_TEXT[semantics['used']]}). Documents the "
                f"two semantics decide differently: {semantics['documents_decided_differently']:,} (disallowed only "
                + ", only ".join(f"under {name}: {semantics[f'removed_only_by_{name}']:,}" for name in SEMANTICS)
                + ")", ""]
    policy = report.get("policy", {})
    if policy:
        out += [f"Policy `{optout.get('policy')}`:", ""]
        out += _table(["case", "action"], list(policy.items()))
    signals = report.get("optout_signals", {})
    for group, title in (("robots", "robots.txt per document"), ("tdmrep", "tdmrep.json per document"),
                         ("url", "URLs")):
        if group in signals:
            out += [f"{title}: " + ", ".join(f"{k} {v:,}" for k, v in signals[group].items()), ""]
    pii = report["pii"]
    out += ["## PII replaced (kept documents)", ""]
    out += _table(["kind", "replaced"], list(pii["replaced"].items())) if pii["replaced"] else ["None found.", ""]
    if pii["replaced"]:
        out += [f"{pii['documents']:,} documents contained PII.", ""]
    return out
