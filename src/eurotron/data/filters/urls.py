"""Document URLs → the origin whose robots.txt and tdmrep.json govern them.

An origin is scheme + host + port (RFC 9309 §2.3): ``http://a.eu`` and ``https://a.eu`` have
separate robots.txt files, and so do two ports of one host. Hosts are lower-cased and IDNA-encoded
(``münchen.de`` → ``xn--mnchen-3ya.de``) so the snapshot and the documents agree on one spelling;
default ports are dropped.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional, Union
from urllib.parse import urlsplit

from .. import native

DEFAULT_PORTS = {"http": 80, "https": 443}


class ParsedUrl(NamedTuple):  # a tuple: built once per document, so it must be cheap
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


# http(s)://host[:port] with a plain ASCII host, followed by the path, query, fragment or nothing.
_PLAIN_URL = re.compile(r"((?i:https?))://([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)\.?(?::(\d{1,5}))?(?=[/?#]|$)")


def _fast_parse(value: str) -> Optional[ParsedUrl]:
    """The common case (http(s), a plain ASCII host, maybe a port) with one regex match; None sends
    anything unusual (IDNA hosts, user info, IPv6 literals, bad ports) to urlsplit."""
    match = _PLAIN_URL.match(value)
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is not None and int(port) > 65535:
        return None
    path = value[match.end():].partition("#")[0] or "/"
    if path[0] == "?":
        path = "/" + path
    host, scheme = host.lower(), scheme.lower()
    if port is None or int(port) == DEFAULT_PORTS[scheme]:
        return ParsedUrl(f"{scheme}://{host}", host, path)
    return ParsedUrl(f"{scheme}://{host}:{int(port)}", host, path)


# The C version of _fast_parse for ASCII URLs (eurotron.data.native), chosen once per process:
# parse_url runs once per document, too often to read EUROTRON_NATIVE each time.
_native_split = native.ext.split_http_url if native.available() else None


def parse_url(value: Union[str, object]) -> ParsedUrl:
    """Split a document URL; raises BadUrl with kind no_url, non_http_url or bad_url."""
    if not isinstance(value, str):
        raise BadUrl("no_url") if value is None else BadUrl("bad_url", f"the URL field holds a {type(value).__name__}")
    value = value.strip()
    if not value:
        raise BadUrl("no_url")
    if _native_split is not None and value.isascii():
        parts = _native_split(value)
        if parts is not None:
            return ParsedUrl(*parts)
    fast = _fast_parse(value)
    if fast is not None:
        return fast
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
    if parts.query or "?" in value.partition("#")[0]:  # a bare "?" is part of what rules match (RFC 9309)
        path += "?" + parts.query
    return ParsedUrl(origin_of(scheme, host, port), host, path)


def split_origin(origin: str) -> tuple[str, str, Optional[int]]:
    """"https://a.eu:8443" → ("https", "a.eu", 8443)."""
    parts = urlsplit(origin)
    return parts.scheme, parts.hostname or "", parts.port

