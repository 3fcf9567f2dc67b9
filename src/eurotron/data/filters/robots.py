"""robots.txt as an AI-training opt-out.

A document is disallowed when any configured agent may not fetch its URL, decided under one of two
`SEMANTICS`: ``rfc9309`` (default; eurotron's own matcher, ``rfc9309.py``) or ``apertus`` (Protego,
the parser Apertus filtered with, to reproduce its decisions). Each run also decides every document
under the other one, and the report counts the documents on which the two differ. This module adds
what a *retroactive* filter over a snapshot needs:

* what a robots.txt that is missing from the snapshot, answered 4xx or 5xx, could not be reached,
  or is unparsable means — an explicit policy, never an accident (`POLICIES`);
* which part of a body is parsed (`read_body`: the first 500 KiB, without a cut last line);
* whether ``User-agent: *`` groups count (``wildcard_group``; Apertus: yes).

A removal is credited to the agents whose own group disallowed, or to ``*`` when the ``*`` group
(that agents without a group fall back to) did.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from .rfc9309 import Rfc9309Rules, agent_token
from .snapshot import Fetched

SEMANTICS = ("rfc9309", "apertus")

ACTIONS = ("keep", "remove")
# What each failure case means under each policy. "missing": the origin is not in the snapshot;
# "4xx": 4xx (429 excepted), or more redirects than RFC 9309 asks crawlers to follow; "5xx": 5xx, 429
# or no answer at all; "unparsable": a 2xx body that is no robots.txt (HTML, binary, no directive);
# "bad_url": no URL or not http(s); "tdmrep_unreadable": a tdmrep.json that is no array of rules.
POLICIES: Dict[str, Dict[str, str]] = {
    # Apertus: only a robots.txt that disallows removes a document; anything else keeps it.
    "apertus": {"missing": "keep", "4xx": "keep", "5xx": "keep", "unparsable": "keep",
                "bad_url": "keep", "tdmrep_unreadable": "keep"},
    # RFC 9309 as a crawler reads it: unavailable (4xx) allows everything, unreachable (5xx)
    # disallows everything, unparsable lines are ignored; an origin never fetched is unknown: remove.
    "rfc9309": {"missing": "remove", "4xx": "keep", "5xx": "remove", "unparsable": "keep",
                "bad_url": "keep", "tdmrep_unreadable": "keep"},
    # Remove whenever the opt-out status cannot be established.
    "strict": {"missing": "remove", "4xx": "keep", "5xx": "remove", "unparsable": "remove",
               "bad_url": "remove", "tdmrep_unreadable": "remove"},
}
CASES = tuple(POLICIES["apertus"])
# RFC 9309 §2.5: crawlers must parse at least 500 KiB; what lies beyond is ignored.
MAX_ROBOTS_BYTES = 500 * 1024
_WILDCARD_GROUP_LINE = re.compile(r"^\s*user[-\s]?agent\s*:?\s*\*\s*(#.*)?$", re.IGNORECASE)
_HIDDEN_WILDCARD = "User-agent: eurotron-hidden-wildcard-group"
_KNOWN_DIRECTIVE = re.compile(
    r"^\s*(user[-\s]?agent|allow|disallow|sitemap|crawl[-\s]delay|host|request[-\s]rate|visit[-\s]time|"
    r"clean-param|noindex|content-signal)\s*(?::|\s)", re.IGNORECASE | re.MULTILINE)


def resolve_policy(preset: str, overrides: Dict[str, Optional[str]]) -> Dict[str, str]:
    """The effective keep/remove action per failure case: the preset, then per-case overrides."""
    if preset not in POLICIES:
        raise DataError(f"filters.optout.policy={preset!r}: must be one of {', '.join(POLICIES)}")
    policy = dict(POLICIES[preset])
    for case, action in overrides.items():
        if action is None:
            continue
        if action not in ACTIONS:
            raise DataError(f"filters.optout.on_{case}={action!r}: must be keep or remove (or null for the policy's choice)")
        policy[case] = action
    return policy


def status_case(fetched: Optional[Fetched]) -> Optional[str]:
    """The failure case of a robots.txt fetch (see POLICIES), or None for a 2xx answer to parse."""
    if fetched is None:
        return "missing"
    if fetched.status is None:
        return "4xx" if (fetched.error or "").startswith("too many redirects") else "5xx"
    if 200 <= fetched.status < 300:
        return None
    if fetched.status == 429 or fetched.status >= 500:
        return "5xx"
    return "4xx"  # 3xx that could not be followed, and 4xx: "unavailable"


def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise DataError(f"filters.optout.robots_semantics={semantics!r}: must be one of {', '.join(SEMANTICS)} "
                        f"(rfc9309: RFC 9309 exactly; apertus: Protego's decisions, as Apertus filtered)")
    return semantics


def check_agents(agents: Sequence[str]) -> None:
    for agent in agents:
        agent_token(agent)


def parsed_part(body: bytes, truncated: bool = False) -> bytes:
    """What of a body is parsed: RFC 9309 §2.5 asks for at least 500 KiB, eurotron parses exactly
    that. A line the cut (or a fetch cut short, `truncated`) leaves incomplete is dropped, as an
    unparseable line (§2.3.1.5): ``Disallow: /html/E12243_01/`` must not become ``Disallow: /html/E``."""
    if len(body) > MAX_ROBOTS_BYTES:
        truncated = body[MAX_ROBOTS_BYTES:MAX_ROBOTS_BYTES + 1] not in (b"\n", b"\r")
        body = body[:MAX_ROBOTS_BYTES]
    if truncated and not body.endswith((b"\n", b"\r")):
        body = body[:max(body.rfind(b"\n"), body.rfind(b"\r")) + 1]
    return body


def read_body(body: Optional[bytes], truncated: bool = False) -> Optional[bytes]:
    """The part of a robots.txt body to parse (`parsed_part`, byte-order mark removed), or None when
    it is no robots.txt at all (HTML, binary, no directive)."""
    data = parsed_part(body or b"", truncated)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data if decode_robots(data) is not None else None


def decode_robots(body: Optional[bytes], truncated: bool = False) -> Optional[str]:
    """The text of a robots.txt body (the part parsed), or None when it is no robots.txt at all."""
    data = parsed_part(body or b"", truncated)
    if b"\x00" in data:
        return None
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    head = text[:2048].lstrip().lower()
    if head.startswith(("<!doctype", "<html", "<?xml", "{", "[")) or "<html" in head or "<body" in head:
        return None
    content = [line for line in (raw.split("#", 1)[0].strip() for raw in text.splitlines()) if line]
    if content and not _KNOWN_DIRECTIVE.search(text):
        return None
    return text


def _hide_wildcard_groups(text: str) -> str:
    """Rename `User-agent: *` so that no agent falls back to that group."""
    return "\n".join(_HIDDEN_WILDCARD if _WILDCARD_GROUP_LINE.match(line) else line for line in text.splitlines())


def make_rules(semantics: str, body: bytes, agents: Sequence[str], wildcard_group: bool):
    """The rules of one robots.txt (`read_body`'s bytes) under `semantics`: an object with
    ``disallowed(url, path)`` (the credited agents) and ``blocks(url, path)``."""
    if check_semantics(semantics) == "rfc9309":
        return Rfc9309Rules(body, agents, wildcard_group)
    return ProtegoRules(body.decode("utf-8", errors="replace"), agents, wildcard_group)


class ProtegoRules:
    """One robots.txt as Protego reads it (``robots_semantics: apertus``), asked about fixed agents.

    Where Protego departs from RFC 9309 (README, "robots.txt semantics"): product tokens matched as
    prefixes (``Applebot-Extended`` obeys ``Applebot``), a final ``$`` also read as a literal,
    absolute-URL rules, ``index.html``, non-UTF-8 escapes, ``*GPTBot*``, a Crawl-delay line splitting
    user-agent lines, ``=`` one octet long."""

    def __init__(self, text: str, agents: Sequence[str], wildcard_group: bool) -> None:
        from protego import Protego

        agents = [a for a in agents if wildcard_group or a.strip() != "*"]
        self.parser = Protego.parse(text if wildcard_group else _hide_wildcard_groups(text))
        self.groups = self._group(agents)

    def _group(self, agents: Sequence[str]) -> List[Tuple[Any, str, List[str]]]:
        """(rule set, representative, credited agents) per robots.txt group the agents fall into:
        agents in one group share one answer, so each group is asked once, straight from its rule
        set. Agents no group applies to may fetch anything and are left out. Without Protego's group
        lookup (a Protego other than the pinned one) every agent is asked through `can_fetch`."""
        lookup = getattr(self.parser, "_get_matching_rule_set", None)
        if not callable(lookup):
            return [(None, agent, [agent]) for agent in agents]
        by_group: Dict[int, Tuple[Any, str, List[str]]] = {}
        for agent in agents:
            group = lookup(agent)
            if group is None:
                continue
            rule_set = group if callable(getattr(group, "can_fetch", None)) else None
            credit = by_group.setdefault(id(group), (rule_set, agent, []))[2]
            name = "*" if getattr(group, "user_agent", None) == "*" else agent
            if name not in credit:
                credit.append(name)
        return list(by_group.values())

    def _allowed(self, rule_set: Any, representative: str, url: str) -> bool:
        if rule_set is None or "/robots.txt" in url:  # Protego's own answer for robots.txt itself
            return self.parser.can_fetch(url, representative)
        return rule_set.can_fetch(url)

    def disallowed(self, url: str, path: str = "") -> List[str]:
        """The agents (as credited) that may not fetch `url`."""
        out: List[str] = []
        for rule_set, representative, credit in self.groups:
            if not self._allowed(rule_set, representative, url):
                out.extend(name for name in credit if name not in out)
        return out

    def blocks(self, url: str, path: str = "") -> bool:
        return any(not self._allowed(r, rep, url) for r, rep, _ in self.groups)
