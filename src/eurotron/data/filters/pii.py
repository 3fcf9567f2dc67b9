"""PII scrubbing: e-mail addresses, IP addresses, IBANs and phone numbers → placeholders, counted.

As in the Apertus pipeline, matches are replaced by ``<email-pii>``, ``<ip-pii>`` (IPv4 and IPv6)
and ``<iban-pii>``; phone numbers become ``<phone-pii>``. Candidates are validated before they are
replaced: IP addresses by `ipaddress`, IBANs by their country's length and the ISO 13616 mod-97
checksum, phone numbers by their digit count (E.164: at most 15). Phone numbers are recognised in
international form (``+49 30 1234 5678``) or after a label (``Tel.``, ``phone:``, ``puh.`` ...), since
bare digit groups are as often dates, prices or timetables.

Kinds run in a fixed order (e-mail, IBAN, IPv6, IPv4, phone) so that one never eats another's digits.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .. import native
from ..errors import DataError

KINDS = ("email", "iban", "ipv6", "ipv4", "phone")
PLACEHOLDERS = {"email": "<email-pii>", "iban": "<iban-pii>", "ipv6": "<ip-pii>", "ipv4": "<ip-pii>",
                "phone": "<phone-pii>"}

# ISO 13616 IBAN lengths per country (the SWIFT registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}

_EMAIL = re.compile(
    r"[\w+-]+(?:\.[\w+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
# Two letters, two check digits, then 11-30 letters/digits, optionally in groups split by one space.
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:(?:[0-9A-Fa-f]{0,4}:){2,6}(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})"
    r"(?![\w:])")
_PHONE_BODY = r"\(?\d{1,5}\)?(?:[ .\-/]?\(?\d{1,5}\)?){1,7}"
_PHONE_INTL = re.compile(rf"(?<![\w+])\+[1-9]\d{{0,2}}(?:[ .\-]?\(0\))?[ .\-]?{_PHONE_BODY}(?!\w)")
_PHONE_LABELLED = re.compile(
    rf"(?i)(?<!\w)(?:tel|tél|phone|telefon|telefono|teléfono|téléphone|telefoon|telefone|tlf|puh|puhelin|τηλ)"
    rf"\.?(?:\s*:)?\s*(\(?0{_PHONE_BODY})(?!\w)")


def iban_valid(candidate: str) -> bool:
    """ISO 13616: the country's length and (rearranged, letters as 10..35) value mod 97 == 1."""
    iban = candidate.replace(" ", "").upper()
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is None or len(iban) != expected or not iban.isalnum() or not iban[2:4].isdigit():
        return False
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _iban_replace(match: "re.Match[str]", counter: List[int]) -> str:
    """Cut the candidate to its country's length (a following word may have been swallowed)."""
    text = match.group(0)
    expected = IBAN_LENGTHS.get(text[:2])
    if expected is None:
        return text
    seen = 0
    for end, ch in enumerate(text, start=1):
        if ch != " ":
            seen += 1
        if seen == expected:
            if iban_valid(text[:end]):
                counter[0] += 1
                return PLACEHOLDERS["iban"] + text[end:]
            return text
    return text


def _ip_replace(match: "re.Match[str]", counter: List[int], version: int) -> str:
    text = match.group(0)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if address.version != version:
        return text
    if version == 6 and (sum(1 for g in text.split(":") if g) < 2 or sum(c.isalnum() for c in text) < 4):
        return text  # "::1", "a::b": too short to tell from prose
    counter[0] += 1
    return PLACEHOLDERS["ipv6" if version == 6 else "ipv4"]


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _phone_replace(match: "re.Match[str]", counter: List[int], group: int) -> str:
    """Replace the number if it has 7-15 digits; a longer run loses trailing groups first (a year or
    a count that follows the number)."""
    whole, number = match.group(0), match.group(group)
    while _digits(number) > 15:
        cut = max(number.rfind(sep) for sep in " .-/")
        if cut <= 0:
            return whole
        number = number[:cut]
    if _digits(number) < 7:
        return whole
    counter[0] += 1
    start = match.start(group) - match.start(0)
    return whole[:start] + PLACEHOLDERS["phone"] + whole[start + len(number):]


def _scrub_emails(text: str, counter: List[int]) -> str:
    """E-mail addresses, found from their "@" (a regex tried at every position costs ~10x more)."""
    pieces: List[str] = []
    done = 0
    at = text.find("@")
    while at != -1:
        match = _EMAIL.match(text, _local_part_start(text, at, done), at + 320)
        if match and match.start() < at < match.end():
            pieces += [text[done:match.start()], PLACEHOLDERS["email"]]
            counter[0] += 1
            done = match.end()
        at = text.find("@", max(at + 1, done))
    return "".join(pieces) + text[done:] if pieces else text


def _local_part_start(text: str, at: int, floor: int) -> int:
    start = at
    while start > max(floor, at - 64) and (text[start - 1].isalnum() or text[start - 1] in "._+-"):
        start -= 1
    while start < at and text[start] == ".":
        start += 1
    return start


_LABELS = ("tel", "tél", "phone", "puh", "τηλ", "tlf")


def _find_all(data: bytes, needle: bytes) -> np.ndarray:
    """Positions of `needle` in `data` (memchr speed: these characters are rare in text)."""
    found = []
    at = data.find(needle)
    while at != -1:
        found.append(at)
        at = data.find(needle, at + 1)
    return np.asarray(found, dtype=np.int64)


def _gates(texts: Sequence[str]) -> Dict[str, np.ndarray]:
    """Per kind, which texts could hold a match: necessary conditions checked for the whole batch at
    once, so that the regexes only run where they can find something. Every check starts from the
    digits (or a rare character), so its cost is a few passes over the bytes (one in C)."""
    data, ends = native.join_utf8(texts)
    n = len(texts)
    if len(data) < 4:
        return {kind: np.ones(n, dtype=bool) for kind in KINDS}
    if native.available():
        flags = np.empty((6, n), dtype=bool)
        native.ext.pii_gates(data, ends, flags)
        email, iban, ipv4, ipv6, plus, run = flags
    else:
        email, iban, ipv4, ipv6, plus, run = _numpy_flags(data, ends, n)
    # A run of digits from a "0" counts as a phone number only after a label.
    for i in np.flatnonzero(run):
        lowered = texts[i].lower()
        run[i] = any(label in lowered for label in _LABELS)
    return {"email": email, "iban": iban, "ipv4": ipv4, "ipv6": ipv6, "phone": plus | run}


def _numpy_flags(data: bytes, ends: np.ndarray, n: int) -> Tuple[np.ndarray, ...]:
    """_gates' per-text flags before the label check (the reference for native.ext.pii_gates): e-mail,
    IBAN, IPv4, IPv6, a "+" before a digit, a "0" followed by 6 more digits within 32 bytes.
    Windows are measured on the concatenated bytes, so they may reach into the next text."""
    buf = np.frombuffer(data, dtype=np.uint8)

    def docs(positions: np.ndarray) -> np.ndarray:
        flags = np.zeros(n, dtype=bool)
        flags[np.searchsorted(ends, positions, side="right")] = True
        return flags

    def at(positions: np.ndarray) -> np.ndarray:  # the byte at each position (0 outside the buffer)
        inside = (positions >= 0) & (positions < len(buf))
        return np.where(inside, buf[np.clip(positions, 0, len(buf) - 1)], 0)

    digits = np.flatnonzero((buf >= 48) & (buf <= 57))
    email = docs(_find_all(data, b"@"))
    # IBAN: two capitals, then two digits.
    before = at(digits - 1), at(digits - 2)
    pair = (at(digits + 1) >= 48) & (at(digits + 1) <= 57)
    capitals = (before[0] >= 65) & (before[0] <= 90) & (before[1] >= 65) & (before[1] <= 90)
    iban = docs(digits[pair & capitals])
    # IPv4: three digit-dot-digit within 9 bytes (an octet has at most 3 digits).
    dot = digits[(at(digits + 1) == 46) & (at(digits + 2) >= 48) & (at(digits + 2) <= 57)] + 1
    ipv4 = docs(dot[np.searchsorted(dot, dot + 9) - np.arange(len(dot)) >= 3])
    # IPv6: "::", or the 6-7 colons of the full forms within 40 bytes.
    colons = _find_all(data, b":")
    full = colons[np.searchsorted(colons, colons + 40) - np.arange(len(colons)) >= 6]
    ipv6 = docs(np.concatenate([_find_all(data, b"::"), full]))
    # Phones: "+" then a digit; or a "0" with 6 more digits within 32 bytes.
    plus = _find_all(data, b"+")
    plus = plus[(at(plus + 1) >= 48) & (at(plus + 1) <= 57)]
    zeros = digits[buf[digits] == 48]
    run = docs(zeros[np.searchsorted(digits, zeros + 32) - np.searchsorted(digits, zeros) >= 7])
    return email, iban, ipv4, ipv6, docs(plus), run


class PiiScrubber:
    def __init__(self, kinds: Sequence[str] = KINDS) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise DataError(f"filters.pii.kinds: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
        self.kinds = [k for k in KINDS if k in kinds]

    @staticmethod
    def _scrub_kind(kind: str, text: str, counter: List[int]) -> str:
        if kind == "email":
            return _scrub_emails(text, counter)
        if kind == "iban":
            return _IBAN.sub(lambda m: _iban_replace(m, counter), text)
        if kind in ("ipv6", "ipv4"):
            version = 6 if kind == "ipv6" else 4
            return (_IPV6 if version == 6 else _IPV4).sub(lambda m: _ip_replace(m, counter, version), text)
        if "+" in text:
            text = _PHONE_INTL.sub(lambda m: _phone_replace(m, counter, 0), text)
        return _PHONE_LABELLED.sub(lambda m: _phone_replace(m, counter, 1), text)

    def scrub_batch(self, texts: Sequence[str]) -> Tuple[List[str], Dict[int, Dict[str, int]]]:
        """The texts with their PII replaced, and for the texts that had any, how many of each kind
        were replaced (by index). Only the texts a gate flags are looked at."""
        out = list(texts)
        found: Dict[int, Dict[str, int]] = {}
        if not self.kinds or not out:
            return out, found
        gates = _gates(out)
        flagged = np.zeros(len(out), dtype=bool)
        for kind in self.kinds:
            flagged |= gates[kind]
        for i in np.flatnonzero(flagged).tolist():
            text, counts = out[i], {}
            for kind in self.kinds:  # in KINDS' order, so that one kind never eats another's digits
                if gates[kind][i]:
                    counter = [0]
                    text = self._scrub_kind(kind, text, counter)
                    if counter[0]:
                        counts[kind] = counter[0]
            if counts:
                out[i], found[i] = text, counts
        return out, found

    def scrub(self, text: str) -> Tuple[str, Dict[str, int]]:
        texts, found = self.scrub_batch([text])
        return texts[0], found.get(0, {})
