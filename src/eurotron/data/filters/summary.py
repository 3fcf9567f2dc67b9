"""A Markdown draft of the EU training-content summary from prepare reports.

The headings follow the Commission's template for the public summary of training content of
general-purpose AI models (July 2025): 1. general information, 2. list of data sources, 3. data
processing aspects. Every figure names where it comes from — ``[R2 tokens.out]`` is the key
``tokens.out`` of report 2, listed under "Sources of this draft" — so a reviewer can trace it.
What no report can know (types of content, licensed or user data, illegal-content measures) is
left as a ``[to complete: ...]`` line for the provider.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ... import __version__
from ...config import SummaryConfig
from ..errors import DataError
from .report import FORMAT, REASON_TEXT

TODO = "[to complete: {}]"


def load_reports(paths: Sequence[str]) -> List[Tuple[str, Dict[str, Any]]]:
    if not paths:
        raise DataError("reports is empty: list the report.json files of the prepared sources, "
                        "e.g. reports='[data/demo/report.json]'")
    out = []
    for path in paths:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / "report.json"
        if not file.is_file():
            raise DataError(f"{path}: no report.json there; run eurotron-prepare for that source first")
        try:
            report = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{file} is not valid JSON ({err})") from err
        if report.get("format") != FORMAT:
            raise DataError(f"{file} is not a eurotron-prepare report (format={report.get('format')!r})")
        out.append((str(file), report))
    return out


def _is_web(report: Dict[str, Any]) -> bool:
    """A source counts as crawled from the web when most of its documents carry an http(s) URL."""
    docs = report["documents"]["in"]
    return bool(docs) and report.get("domains", {}).get("documents_with_url", 0) * 2 >= docs


def _size_band(tokens: int) -> str:
    # The template asks for the size of the training data per modality as a range.
    if tokens < 10**9:
        return "less than 1 billion tokens"
    if tokens <= 10 * 10**12:
        return "1 billion to 10 trillion tokens"
    return "more than 10 trillion tokens"


def _ref(i: int, key: str) -> str:
    return f"[R{i} `{key}`]"


def render_summary(cfg: SummaryConfig, reports: List[Tuple[str, Dict[str, Any]]]) -> str:
    m, p = cfg.model, cfg.provider
    total = sum(r["tokens"]["out"] for _, r in reports)
    refs = " + ".join(_ref(i, "tokens.out") for i in range(1, len(reports) + 1))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = [f"# Public summary of training content: {m.name} (draft)", "",
           f"Drafted by eurotron-summary {__version__} on {now} from {len(reports)} eurotron-prepare report(s). "
           "A figure's source is given as [R<n> `<key>`]: the key in report n (see the end). Lines marked "
           "\"to complete\" need the provider's knowledge.", ""]
    out += ["## 1. General information", "", "### 1.1 Provider identification", "",
            f"- Name: {p.name}", f"- Contact: {p.contact}", "",
            "### 1.2 Model identification", "",
            f"- Model: {m.name}, version {m.version}", f"- Placement on the EU market: {m.release_date}"]
    if m.base_model:
        out.append(f"- Derived from: {m.base_model}")
    out += ["", "### 1.3 Modalities, overall training data size and other characteristics", "",
            f"- Modalities: {', '.join(m.modalities)}",
            f"- Training data size (text): {total:,} tokens ({_size_band(total)}) = {refs}"]
    languages: Dict[str, int] = {}
    for _, r in reports:
        for lang, n in r["languages"]["out"].items():
            languages[lang] = languages.get(lang, 0) + n
    docs_out = sum(languages.values())
    if languages:
        ranked = sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))
        out.append("- Languages (share of documents, from `languages.out` of every report): "
                   + ", ".join(f"{lang} {100 * n / docs_out:.1f}%" for lang, n in ranked))
    lasts = [(r["crawl_period"]["out"]["last"], i) for i, (_, r) in enumerate(reports, 1) if r["crawl_period"]["out"]["last"]]
    if lasts:
        last, i = max(lasts, key=lambda li: (li[0], -li[1]))  # the first report with the latest date
        out.append(f"- Latest data (knowledge cut-off): {last} {_ref(i, 'crawl_period.out.last')}")
    out += [f"- Types of content: {TODO.format('e.g. news, encyclopedic text, forums, code')}", ""]
    out += _sources_section(cfg, reports)
    out += _processing_section(reports)
    out += ["## Sources of this draft", ""]
    for i, (path, r) in enumerate(reports, 1):
        out.append(f"- R{i}: `{path}` (prepared {r.get('created')}, source `{r['source'].get('type')}` "
                   f"{r['source'].get('path') or ''})")
    return "\n".join(out) + "\n"


def _sources_section(cfg: SummaryConfig, reports: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    web = [(i, path, r) for i, (path, r) in enumerate(reports, 1) if _is_web(r)]
    other = [(i, path, r) for i, (path, r) in enumerate(reports, 1) if not _is_web(r)]
    out = ["## 2. List of data sources", "", "### 2.1 Publicly available datasets", ""]
    for i, path, r in other:
        out.append(f"- {r['source'].get('path') or r['source'].get('type')}: {r['documents']['out']:,} documents, "
                   f"{r['tokens']['out']:,} tokens {_ref(i, 'tokens.out')}; "
                   + TODO.format("name, link, licence; or move to 2.2 if obtained under a licence"))
    if not other:
        out.append("- " + TODO.format("none, or list them"))
    out += ["", "### 2.2 Private non-publicly available datasets obtained from third parties", "",
            "- " + TODO.format("licensed data, or \"none\""), "",
            "### 2.3 Data crawled and scraped from online sources", ""]
    if not web:
        out += ["- " + TODO.format("none, or describe the crawls"), ""]
    for i, path, r in web:
        period = r["crawl_period"]["in"]
        kept = r["tokens"]["out"]
        out += [f"#### {r['source'].get('path') or r['source'].get('type')} (R{i})", "",
                f"- Crawler(s): {TODO.format('the crawler or crawl (e.g. Common Crawl) and how it behaves')}",
                f"- Collection period: {period['first']} to {period['last']} "
                f"{_ref(i, 'crawl_period.in')}" if period["first"] else "- Collection period: "
                + TODO.format("the documents carry no dates"),
                f"- Size after filtering: {r['documents']['out']:,} documents, {kept:,} tokens {_ref(i, 'tokens.out')}",
                f"- Most relevant domains (by tokens kept) {_ref(i, 'domains.top_out')}:"]
        for entry in r["domains"]["top_out"][:cfg.top_domains]:
            share = 100 * entry["tokens"] / kept if kept else 0.0
            out.append(f"  - {entry['domain']}: {entry['tokens']:,} tokens ({share:.1f}%)")
        if r["domains"].get("approximate"):
            out.append("  - (domain counts are lower bounds: the source has very many domains)")
        out.append("")
    out += ["### 2.4 User data", "", "- " + TODO.format("whether data from users of the provider's services was used"),
            "", "### 2.5 Synthetic data", "", "- " + TODO.format("synthetic data used, and which models made it"),
            "", "### 2.6 Other sources of data", "", "- " + TODO.format("other sources, or \"none\""), ""]
    return out


def _processing_section(reports: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    out = ["## 3. Data processing aspects", "",
           "### 3.1 Respect of reservation of rights from the text and data mining exception", ""]
    for i, (_, r) in enumerate(reports, 1):
        filters = r.get("filters") or {}
        label = f"R{i} ({r['source'].get('path') or r['source'].get('type')})"
        if not filters.get("enabled"):
            out += [f"- {label}: no opt-out filtering was applied by eurotron {_ref(i, 'filters.enabled')}; "
                    + TODO.format("how rights reservations were respected for this source"), ""]
            continue
        o = filters["optout"]
        protocols = [name for name, on in (("robots.txt (RFC 9309)", o["robots"]),
                                           ("the TDM Reservation Protocol (tdmrep.json, HTTP headers, HTML meta)",
                                            o["tdmrep"])) if on]
        snap = r.get("snapshot") or {}
        line = f"- {label}: honoured {' and '.join(protocols) or 'no protocol'}"
        if snap:
            line += (f", as published on {snap.get('fetched_first')} to {snap.get('fetched_last')} "
                     f"({snap.get('origins', 0):,} origins) {_ref(i, 'snapshot')}")
        out.append(line + ".")
        if o["robots"]:
            # Reports from before robots_semantics existed were decided by Protego.
            read = ("as Protego reads it (Apertus's filtering reproduced)"
                    if o.get("robots_semantics", "apertus") == "apertus" else "as RFC 9309 specifies")
            out.append(f"  - A document was removed when any of these crawlers may not fetch its URL: "
                       f"{', '.join(o['agents'])} {_ref(i, 'filters.optout.agents')}; "
                       f"`User-agent: *` groups {'count' if o['wildcard_group'] else 'do not count'}; "
                       f"robots.txt read {read}.")
            by_agent = (r["removed"].get("robots") or {}).get("by_agent")
            if by_agent:
                out.append("  - robots.txt removals by the crawler whose group disallowed (`*`: the group for all "
                           "crawlers): " + ", ".join(f"{k} {v:,}" for k, v in by_agent.items())
                           + f" {_ref(i, 'removed.robots.by_agent')}.")
        policy = r.get("policy") or {}
        if policy:
            out.append(f"  - Unavailable or unparsable opt-out files, policy `{o['policy']}`: "
                       + ", ".join(f"{k} → {v}" for k, v in policy.items()) + f" {_ref(i, 'policy')}.")
        tokens_in = r["tokens"]["in"] or 1
        for reason in ("blocklist", "not_allowlisted", "url_policy", "robots", "robots_policy", "tdmrep", "tdmrep_policy"):
            entry = r["removed"].get(reason)
            if entry:
                out.append(f"  - Removed ({REASON_TEXT[reason]}): {entry['docs']:,} documents, {entry['tokens']:,} "
                           f"tokens, {100 * entry['tokens'] / tokens_in:.2f}% of the tokens read "
                           f"{_ref(i, f'removed.{reason}')}.")
        out.append("")
    out += ["### 3.2 Removal of illegal content", "",
            "- " + TODO.format("measures taken to avoid or remove illegal content (e.g. CSAM hash lists, "
                               "blocklists of unlawful sites)"), ""]
    blocked = [(i, r["removed"]["blocklist"]) for i, (_, r) in enumerate(reports, 1) if "blocklist" in r["removed"]]
    for i, entry in blocked:
        out.append(f"- Domain block list: {entry['docs']:,} documents removed {_ref(i, 'removed.blocklist')}.")
    out += ["### 3.3 Other information", ""]
    for i, (_, r) in enumerate(reports, 1):
        pii = r["pii"]
        if pii["replaced"]:
            out.append(f"- Personal data: {', '.join(f'{v:,} {k}' for k, v in pii['replaced'].items())} replaced by "
                       f"placeholders in {pii['documents']:,} documents {_ref(i, 'pii')}.")
        for reason in ("dedup_exact", "dedup_near"):
            entry = r["removed"].get(reason)
            if entry:
                out.append(f"- Deduplication ({REASON_TEXT[reason]}): {entry['docs']:,} documents removed "
                           f"{_ref(i, f'removed.{reason}')}.")
    return out + [""]
