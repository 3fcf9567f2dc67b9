"""TDM Reservation Protocol (W3C Community Group final report, 2024-05-10).

Three places can reserve text-and-data-mining rights (DSM Directive Art. 4(3)), in this order of
precedence — the first that says anything about a document decides:

1. ``/.well-known/tdmrep.json`` of the origin: a JSON array of ``{"location": <path pattern>,
   "tdm-reservation": 0|1, "tdm-policy": <URL>}``; patterns are robots.txt-style (``*`` any
   characters, ``$`` end), matched against path + query, and the first matching rule wins;
2. the ``tdm-reservation`` (and ``tdm-policy``) HTTP response headers the document record carries;
3. ``<meta name="tdm-reservation" content="1">`` in the raw HTML the record carries.

``tdm-reservation: 1`` reserves the rights (the document is removed); ``0`` says they are not
reserved (kept, and lower-precedence signals are not consulted).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

from .snapshot import Fetched

# Only the head of an HTML document is searched for <meta> tags.
MAX_HTML_CHARS = 256 * 1024
_META_TAG = re.compile(r"<meta\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")


class UnreadableTdmRep(ValueError):
    """A tdmrep.json that is not a JSON array of rules."""


@dataclass(frozen=True)
class Signal:
    reserved: bool
    source: str  # well_known | header | html
    policy: Optional[str] = None


@dataclass(frozen=True)
class _Rule:
    location: str
    pattern: "re.Pattern[str]"
    reserved: bool
    policy: Optional[str]


def _compile_location(location: str) -> "re.Pattern[str]":
    anchored = location.endswith("$")
    body = location[:-1] if anchored else location
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


def _reservation(value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return None
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return value.strip() == "1"
    return None


class TdmRepFile:
    """The rules of one origin's tdmrep.json. Entries without a location or a 0/1 reservation are
    skipped and counted in `invalid_rules`."""

    def __init__(self, body: bytes) -> None:
        try:
            data = json.loads(body.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnreadableTdmRep(f"not JSON ({err})") from None
        if not isinstance(data, list):
            raise UnreadableTdmRep(f"a JSON {type(data).__name__}, not an array of rules")
        self.rules: List[_Rule] = []
        self.invalid_rules = 0
        for entry in data:
            if not isinstance(entry, dict):
                self.invalid_rules += 1
                continue
            location = entry.get("location")
            reserved = _reservation(entry.get("tdm-reservation"))
            if not isinstance(location, str) or not location.startswith(("/", "*")) or reserved is None:
                self.invalid_rules += 1
                continue
            policy = entry.get("tdm-policy")
            self.rules.append(_Rule(location, _compile_location(location), reserved,
                                    policy if isinstance(policy, str) else None))

    def match(self, path: str) -> Optional[Signal]:
        for rule in self.rules:
            if rule.pattern.match(path):
                return Signal(rule.reserved, "well_known", rule.policy)
        return None


def well_known(fetched: Optional[Fetched]) -> Tuple[Optional[TdmRepFile], str]:
    """The parsed tdmrep.json of an origin and its status: ok, absent (never fetched, 3xx/4xx/5xx or
    unreachable: no file to honour) or unreadable (raise-free: the caller applies the policy)."""
    if fetched is None or fetched.status is None or not 200 <= fetched.status < 300:
        return None, "absent"
    try:
        return TdmRepFile(fetched.body or b""), "ok"
    except UnreadableTdmRep:
        return None, "unreadable"


def header_signal(headers: Any) -> Optional[Signal]:
    """`tdm-reservation` / `tdm-policy` from response headers (a mapping or a list of pairs)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    values = {}
    try:
        for name, value in pairs:
            if isinstance(name, str):
                values[name.strip().lower()] = value
    except (TypeError, ValueError):
        return None
    reserved = _reservation(values.get("tdm-reservation"))
    if reserved is None:
        return None
    policy = values.get("tdm-policy")
    return Signal(reserved, "header", policy if isinstance(policy, str) else None)


def html_signal(html: Any) -> Optional[Signal]:
    """`<meta name="tdm-reservation" content="0|1">` (and tdm-policy) in raw HTML."""
    if not isinstance(html, str) or "tdm-" not in html[:MAX_HTML_CHARS].lower():
        return None
    reserved: Optional[bool] = None
    policy: Optional[str] = None
    for tag in _META_TAG.finditer(html[:MAX_HTML_CHARS]):
        attrs = {m.group(1).lower(): next(g for g in m.groups()[1:] if g is not None)
                 for m in _ATTRIBUTE.finditer(tag.group(0))}
        name = attrs.get("name", "").strip().lower()
        if name == "tdm-reservation" and reserved is None:
            reserved = _reservation(attrs.get("content"))
        elif name == "tdm-policy" and policy is None:
            policy = attrs.get("content")
    return None if reserved is None else Signal(reserved, "html", policy)


def decide(file: Optional[TdmRepFile], path: str, headers: Any = None, html: Any = None) -> Optional[Signal]:
    """The signal that governs a document (see the module docstring), or None when nothing says."""
    if file is not None:
        signal = file.match(path)
        if signal is not None:
            return signal
    return header_signal(headers) or html_signal(html)
