"""Domain block and allow lists, read from files.

One domain per line; ``#`` starts a comment; a leading ``*.`` or ``.`` is ignored and a URL is read
as its host. A listed domain covers its subdomains, and the most specific listed domain decides:
with ``example.eu`` blocked and ``open.example.eu`` allowed, ``www.open.example.eu`` is kept. A
domain on both lists is blocked. When an allow list is given, a document whose host is on neither
list is removed (``not_allowlisted``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from ..errors import DataError
from .urls import BadUrl, normalise_host, parse_url


def read_domain_file(path: Path | str, key: str) -> set:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}={path}: no such file (one domain per line)")
    domains = set()
    for line_no, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            if "://" in entry:
                entry = parse_url(entry).host
            domains.add(normalise_host(entry.lstrip("*").lstrip(".")))
        except BadUrl as err:
            raise DataError(f"{file}:{line_no}: {raw.strip()!r} is not a domain ({err})") from None
    return domains


class DomainLists:
    def __init__(self, block_file: Optional[str] = None, allow_file: Optional[str] = None) -> None:
        self.rules: Dict[str, str] = {}
        if allow_file:
            self.rules.update(dict.fromkeys(read_domain_file(allow_file, "filters.allow_domains"), "allow"))
        if block_file:  # after the allow list: a domain on both is blocked
            self.rules.update(dict.fromkeys(read_domain_file(block_file, "filters.block_domains"), "block"))
        self.allow_list = bool(allow_file)

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.allow_list

    def check(self, host: str) -> Optional[str]:
        """None (keep), "blocklist" or "not_allowlisted"."""
        labels = host.split(".")
        for i in range(len(labels)):
            verdict = self.rules.get(".".join(labels[i:]))
            if verdict is not None:
                return "blocklist" if verdict == "block" else None
        return "not_allowlisted" if self.allow_list else None
