"""Document URLs → the origin whose robots.txt and tdmrep.json govern them.

An origin is scheme + host + port (RFC 9309 §2.3): ``http://a.eu`` and ``https://a.eu`` have
separate robots.txt files, and so do two ports of one host. Hosts are lower-cased and IDNA-encoded
(``münchen.de`` → ``xn--mnchen-3ya.de``) so the snapshot and the documents agree on one spelling;
default ports are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ParsedUrl:
    origin: str  # "https://www.example.eu" or "http://example.eu:8080"
    host: str  # "www.example.eu"
    path: str  # path + query, as robots.txt rules match it ("/a/b?c=1"); "/" when empty


class BadUrl(ValueError):
    """The value is no http(s) URL; `kind` says why (for the report)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


def origin_of(scheme: str, host: str, port: Optional[int]) -> str:
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def normalise_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if not host or host.startswith(".") or ".." in host:
        raise BadUrl("bad_url", f"host {host!r} is not a domain name")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise BadUrl("bad_url", f"host {host!r} is not a valid internationalised domain name ({err})") from None


# scheme://host[:port]/path?query#fragment with a plain host; anything else takes urlsplit's path.
_SIMPLE_URL = re.compile(r"(https?)://([A-Za-z0-9.-]+)(?::(\d{1,5}))?([/?][^#]*)?(?:#.*)?", re.IGNORECASE | re.DOTALL)


def parse_url(value: Union[str, object]) -> ParsedUrl:
    """Split a document URL; raises BadUrl with kind no_url, non_http_url or bad_url."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadUrl("no_url")
    if not isinstance(value, str):
        raise BadUrl("bad_url", f"the URL field holds a {type(value).__name__}")
    simple = _SIMPLE_URL.fullmatch(value.strip())
    if simple is not None:
        scheme, host, port, path = simple.groups()
        port_number = int(port) if port else None
        if port_number is None or port_number <= 65535:
            host = host.rstrip(".").lower()
            if host and not host.startswith(".") and ".." not in host:
                path = path or "/"
                if path.startswith("?"):
                    path = "/" + path
                return ParsedUrl(origin_of(scheme.lower(), host, port_number), host, path)
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as err:
        raise BadUrl("bad_url", str(err)) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadUrl("non_http_url", f"scheme {scheme or '(none)'!r}")
    if not parts.hostname:
        raise BadUrl("bad_url", "no host")
    host = normalise_host(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return ParsedUrl(origin_of(scheme, host, port), host, path)


def split_origin(origin: str) -> tuple[str, str, Optional[int]]:
    """"https://a.eu:8443" → ("https", "a.eu", 8443)."""
    parts = urlsplit(origin)
    return parts.scheme, parts.hostname or "", parts.port


def canonical_origin(value: str) -> str:
    """The origin of a URL or origin string, in the spelling `parse_url` gives."""
    return parse_url(value).origin
