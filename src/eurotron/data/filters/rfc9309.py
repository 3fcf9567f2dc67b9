"""robots.txt decisions as RFC 9309 specifies them, written here (no third-party parser).

``parse`` reads a body (bytes) into groups; ``Rfc9309Rules`` selects, per crawler, the groups whose
product token equals the crawler's (merged), else the ``*`` groups, and decides a path by the
longest matching rule, Allow winning a tie. Rules and paths are compared as octets after one
normalisation (``canonical``), so ``%E9`` stays the octet E9 and never becomes U+FFFD.

Where the RFC leaves room, the reading taken is marked "Reading:" here and listed in README
"Data compliance" (robots.txt semantics).
"""

from __future__ import annotations

import codecs
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import DataError

WILDCARD = "*"
# §2.2.1 makes a product token [a-zA-Z_-]+. Reading: digits too, as real crawlers' names hold them
# (AI2Bot, in Apertus's list): else "User-agent: AI2Bot" would name the crawler "AI".
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# A configured crawler: a product token, optionally with a version ("CCBot/2.0"), or "*".
_AGENT = re.compile(r"([A-Za-z0-9_-]+)(?:/\S*)?")
_EOL = re.compile(r"\r\n|\r|\n")
_WS = " \t\v\f"  # ASCII only: the body is read as Latin-1, where str.strip() would eat octets A0 and 85
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ALREADY_CANONICAL = re.compile(r"[A-Za-z0-9._~/-]*").fullmatch
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
# Every octet but the unreserved ones, "/" and "%" (escapes are read first) → %XX.
_ENCODE = {code: "%%%02X" % code for code in range(256) if chr(code) not in _UNRESERVED and chr(code) not in "/%"}
# Reading: RFC 9309 defines only user-agent / allow / disallow; §2.2.4 lets crawlers be lenient with
# spellings. The misspellings and colon-less forms below are accepted, as Protego and Google do.
_KEYS = {"user-agent": "user-agent", "useragent": "user-agent", "user agent": "user-agent",
         "allow": "allow", **dict.fromkeys(
             ("disallow", "dissallow", "dissalow", "disalow", "diasllow", "disallaw"), "disallow")}
_SPACE_FORM = re.compile(r"(user[ \t]+agent|[A-Za-z-]+)[ \t]+(.*)", re.IGNORECASE)


# ------------------------------------------------------------------------------------ octets
def _escape(match: "re.Match[str]") -> str:
    hexa = match.group(1)
    if hexa is None:
        return "%25"
    char = chr(int(hexa, 16))
    return char if char in _UNRESERVED else "%" + hexa.upper()


def canonical(octets: str) -> str:
    """The comparison form of a path or rule, given as octets (a str of code points < 256).

    §2.2.2: escapes of unreserved characters are decoded; everything else outside the unreserved set
    is percent-encoded (upper-case hex), so ``%e9`` = ``%E9`` and ``:`` = ``%3A``. Reading: ``/``
    stays as it is and ``%2F`` stays encoded (the RFC's own table keeps ``/``; RFC 3986 makes the two
    different paths). A ``%`` that starts no escape is the octet ``%`` (``%25``)."""
    if _ALREADY_CANONICAL(octets):
        return octets
    if "%" in octets:
        octets = _ESCAPE.sub(_escape, octets)
    return octets.translate(_ENCODE)


def canonical_path(path: str) -> str:
    """A document URL's path and query (Unicode) in comparison form: non-ASCII as UTF-8 octets."""
    if not path.isascii():
        path = path.encode("utf-8", "surrogatepass").decode("latin-1")
    return canonical(path)


# ------------------------------------------------------------------------------------- rules
class Rule(NamedTuple):
    allow: bool
    length: int  # octets of the normalised pattern, `*` and `$` included: the "most specific" measure
    pieces: Tuple[str, ...]  # the canonical literals between the `*`s
    anchored: bool  # a final `$`


def compile_rule(allow: bool, value: str) -> Optional[Rule]:
    """One Allow/Disallow value (octets); None for an empty one, which matches nothing (§2.2.2).

    §2.2.3: ``*`` is any run of octets, a final ``$`` ends the path; a ``$`` elsewhere is a literal
    (one reading per rule, never both). Matching starts at the path's first octet, so a value that is
    an absolute URL (``https://a.eu/x``) matches nothing."""
    if not value:
        return None
    anchored = value.endswith("$")
    pieces = tuple(canonical(piece) for piece in (value[:-1] if anchored else value).split("*"))
    return Rule(allow, sum(map(len, pieces)) + len(pieces) - 1 + anchored, pieces, anchored)


class Matcher:
    """The merged rules of the groups one crawler obeys: the longest match decides, Allow wins a tie."""

    __slots__ = ("_match", "_allow")

    def __init__(self, rules: Sequence[Rule]) -> None:
        ordered = sorted(set(rules), key=lambda r: (-r.length, not r.allow))
        # One alternation in priority order: the first alternative that matches is the winning rule,
        # named by the empty group that ends it (lastindex).
        alternatives, allow = [], [False]
        for rule in ordered:
            regex = re.escape(rule.pieces[0])
            # A piece after a `*` is taken at its leftmost place and kept (a lookahead captures it, a
            # back-reference consumes it): the leftmost fit leaves the most room for the rest, and no
            # backtracking keeps a match linear in the path.
            middle = rule.pieces[1:-1] if rule.anchored else rule.pieces[1:]
            for piece in middle:
                if piece:
                    allow.append(False)
                    name = f"p{len(allow) - 1}"
                    regex += f"(?=(?P<{name}>.*?{re.escape(piece)}))(?P={name})"
            if rule.anchored:
                regex += (f".*{re.escape(rule.pieces[-1])}" if len(rule.pieces) > 1 else "") + r"\Z"
            allow.append(rule.allow)
            alternatives.append(f"(?:{regex}())")
        self._allow = allow
        self._match = re.compile("|".join(alternatives), re.DOTALL).match

    def allowed(self, path: str) -> bool:
        """`path` in comparison form (`canonical_path`)."""
        found = self._match(path)
        return found is None or self._allow[found.lastindex]


# ------------------------------------------------------------------------------------ parsing
class Group(NamedTuple):
    tokens: List[Optional[str]]  # lower-case product tokens, "*", or None (a value naming no crawler)
    rules: List[Rule]


def line_token(value: str) -> Optional[str]:
    """The product token a user-agent line names.

    Reading: a value with more than a token (``CCBot/2.0``, ``GPTBot # note``) names its leading
    token (``ccbot``), as an HTTP product does; a value with no leading token (``*GPTBot*``) names
    no crawler, and is not ``*`` either."""
    if value == WILDCARD:
        return WILDCARD
    found = _TOKEN.match(value)
    return found.group().lower() if found else None


def _directive(line: str) -> Optional[Tuple[str, str]]:
    head, colon, rest = line.partition(":")
    key = " ".join(head.lower().split())
    if colon and key in _KEYS:
        return _KEYS[key], rest.strip(_WS)
    spaced = _SPACE_FORM.fullmatch(line)  # "Disallow /x", "User agent GPTBot"
    if spaced is not None:
        key = " ".join(spaced.group(1).lower().split())
        if key in _KEYS:
            return _KEYS[key], spaced.group(2).strip(_WS)
    return None


def parse(body: bytes) -> List[Group]:
    """The groups of a robots.txt body (already cut to what is parsed; see robots.read_body).

    Consecutive user-agent lines open one group; Allow/Disallow lines end the run of user-agent
    lines; other records (Sitemap, Crawl-delay, unknown, unparsable lines) neither end a group nor
    split a run (§2.2.4). Rules before the first user-agent line belong to no group (ignored)."""
    if body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8):]
    text = body.decode("latin-1")  # one code point per octet: patterns keep their octets
    groups: List[Group] = []
    current: Optional[Group] = None
    in_agent_lines = False
    for raw in _EOL.split(text):
        directive = _directive(raw.partition("#")[0].strip(_WS))
        if directive is None:
            continue
        key, value = directive
        if key == "user-agent":
            if not in_agent_lines:
                current = Group([], [])
                groups.append(current)
                in_agent_lines = True
            current.tokens.append(line_token(value))
        elif current is not None:
            in_agent_lines = False
            rule = compile_rule(key == "allow", value)
            if rule is not None:
                current.rules.append(rule)
    return groups


def agent_token(agent: str) -> str:
    """The product token a configured crawler matches groups by ("CCBot/2.0" → "ccbot")."""
    agent = agent.strip()
    if agent == WILDCARD:
        return WILDCARD
    found = _AGENT.fullmatch(agent)
    if found is None:
        raise DataError(f"filters.optout.agents: {agent!r} is no crawler product token (letters, digits, '_' "
                        f"and '-', optionally /version, RFC 9309 §2.2.1), nor '*'")
    return found.group(1).lower()


def _is_robots_txt(path: str) -> bool:
    return path == "/robots.txt" or path.startswith("/robots.txt%3F")  # §2.2.2: implicitly allowed


class Rfc9309Rules:
    """One parsed robots.txt, asked about a fixed list of crawlers (`disallowed`, `blocks`)."""

    def __init__(self, body: bytes, agents: Sequence[str], wildcard_group: bool) -> None:
        groups = parse(body)
        by_token: Dict[Optional[str], List[int]] = {}
        for index, group in enumerate(groups):
            for token in set(group.tokens):
                by_token.setdefault(token, []).append(index)
        fallback = by_token.get(WILDCARD, []) if wildcard_group else []
        # Crawlers that obey the same groups share one decision; a removal is credited to the
        # crawlers whose own group it is, or to "*" when the `*` group decided.
        shared: Dict[Tuple[int, ...], List[str]] = {}
        for agent in agents:
            token = agent_token(agent)
            if token == WILDCARD and not wildcard_group:
                continue
            own = by_token.get(token, []) if token != WILDCARD else []
            chosen = tuple(own or fallback)
            credit = shared.setdefault(chosen, [])
            name = agent if own else WILDCARD
            if name not in credit:
                credit.append(name)
        self.deciders: List[Tuple[Matcher, List[str]]] = []
        for chosen, credit in shared.items():
            rules = [rule for index in chosen for rule in groups[index].rules]
            if rules:  # a crawler whose groups have no rules may fetch anything
                self.deciders.append((Matcher(rules), credit))

    def disallowed(self, url: str, path: str) -> List[str]:
        """The crawlers (as credited) that may not fetch `path` (path and query, as ParsedUrl has
        them; `url` is not read)."""
        if not self.deciders:
            return []
        path = canonical_path(path)
        if _is_robots_txt(path):
            return []
        out: List[str] = []
        for matcher, credit in self.deciders:
            if not matcher.allowed(path):
                out.extend(name for name in credit if name not in out)
        return out

    def blocks(self, url: str, path: str) -> bool:
        """Whether any of the crawlers may not fetch `path`."""
        if not self.deciders:
            return False
        path = canonical_path(path)
        return not _is_robots_txt(path) and any(not m.allowed(path) for m, _ in self.deciders)
