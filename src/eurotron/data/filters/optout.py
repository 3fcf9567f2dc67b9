"""The opt-out filter: robots.txt for AI crawlers and TDMRep, decided from a snapshot.

Per document (with a URL): robots.txt first — removed when a listed agent is disallowed, or when the
robots.txt case (missing, 4xx, 5xx, unparsable) is one the policy removes — then TDMRep — removed
when the governing signal reserves TDM rights, or when the origin's tdmrep.json is unreadable and
the policy removes those. Parsed origins are cached per process (a bounded LRU), so each robots.txt
is parsed once per worker however many documents its origin has.

robots.txt is decided under ``semantics`` (rfc9309 | apertus) and, for the report, also under the
other one: ``OptOutDecision.differs`` names the semantics that alone disallows a document.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from . import robots, tdmrep
from .snapshot import SnapshotStore
from .urls import ParsedUrl

CACHED_ORIGINS = 65536


class OptOutDecision(NamedTuple):  # a tuple: one is made per document
    # None: kept; robots | robots_policy | tdmrep | tdmrep_policy
    reason: Optional[str] = None
    # robots: the disallowed agents; robots_policy: the case; tdmrep: the signal's source
    agents: Sequence[str] = ()
    detail: Optional[str] = None
    # What the snapshot said about the origin (for the report): ok | missing | 4xx | 5xx | unparsable
    robots_case: str = "ok"
    # ok | absent | unreadable
    tdmrep_status: str = "absent"
    # When robots.txt decides the document differently under the two semantics: the one that disallows.
    differs: Optional[str] = None


@dataclass
class _Origin:
    rules: Any  # under `semantics` (robots.make_rules), None when the robots.txt case is not "ok"
    other: Any  # the same robots.txt under the other semantics
    robots_case: str
    tdm_file: Optional[tdmrep.TdmRepFile]
    tdm_status: str


class OptOutFilter:
    def __init__(self, store: SnapshotStore, agents: Sequence[str], wildcard_group: bool, use_robots: bool,
                 use_tdmrep: bool, policy: Dict[str, str], semantics: str = "rfc9309") -> None:
        self.semantics = robots.check_semantics(semantics)
        self.other = next(s for s in robots.SEMANTICS if s != semantics)
        if use_robots:
            robots.check_agents(agents)
        self.store = store
        self.agents = list(agents)
        self.wildcard_group = wildcard_group
        self.use_robots = use_robots
        self.use_tdmrep = use_tdmrep
        self.policy = policy
        self._cache: "OrderedDict[str, _Origin]" = OrderedDict()

    def _origin(self, origin: str) -> _Origin:
        cached = self._cache.get(origin)
        if cached is not None:
            self._cache.move_to_end(origin)
            return cached
        record = self.store.get(origin)
        rules, other, case = None, None, "ok"
        if self.use_robots:
            fetched = record.robots if record is not None else None
            case = "missing" if record is None else (robots.status_case(fetched) or "ok")
            if case == "ok":
                body = robots.read_body(fetched.body, fetched.truncated)
                if body is None:
                    case = "unparsable"
                else:
                    rules = robots.make_rules(self.semantics, body, self.agents, self.wildcard_group)
                    other = robots.make_rules(self.other, body, self.agents, self.wildcard_group)
        tdm_file, tdm_status = (None, "absent")
        if self.use_tdmrep and record is not None:
            tdm_file, tdm_status = tdmrep.well_known(record.tdmrep)
        entry = _Origin(rules, other, case, tdm_file, tdm_status)
        self._cache[origin] = entry
        if len(self._cache) > CACHED_ORIGINS:
            self._cache.popitem(last=False)
        return entry

    def check(self, url: str, parsed: ParsedUrl, headers: Any = None, html: Any = None) -> OptOutDecision:
        entry = self._origin(parsed.origin)
        case, status = entry.robots_case, entry.tdm_status
        differs = None
        if self.use_robots:
            if entry.rules is not None:
                agents = entry.rules.disallowed(url, parsed.path)
                if bool(agents) != entry.other.blocks(url, parsed.path):
                    differs = self.semantics if agents else self.other
                if agents:
                    return OptOutDecision("robots", agents, None, case, status, differs)
            elif self.policy[case] == "remove":
                return OptOutDecision("robots_policy", [], case, case, status)
        if self.use_tdmrep:
            if status == "unreadable" and self.policy["tdmrep_unreadable"] == "remove":
                return OptOutDecision("tdmrep_policy", [], "unreadable", case, status, differs)
            signal = (tdmrep.decide(entry.tdm_file, parsed.path, headers, html)
                      if entry.tdm_file is not None or headers is not None or html is not None else None)
            if signal is not None and signal.reserved:
                return OptOutDecision("tdmrep", [], signal.source, case, status, differs)
        return OptOutDecision(None, [], None, case, status, differs)


def bad_url_decision(policy: Dict[str, str], kind: str) -> Tuple[Optional[str], Optional[str]]:
    """(reason, detail) for a document whose URL cannot be checked (no_url, non_http_url, bad_url)."""
    if policy["bad_url"] == "remove":
        return "url_policy", kind
    return None, None
