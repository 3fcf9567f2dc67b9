"""The C extension `eurotron.data._native` (built by setup.py), when it is there and wanted.

It does the per-document loops of eurotron-prepare that numpy can only batch at a cost: the word
layout and dedup keys (dedup.py), the dedup decisions (dedup_index.py), the PII gates (pii.py), the
fast path of URL splitting (urls.py), and here: flattening token ids, joining texts' UTF-8, telling
which texts are NFC already. Each gives the same output as the numpy/Python code beside its caller,
which stays the reference and the fallback: ``EUROTRON_NATIVE=0`` forces those paths (read at each
call, so tests and worker processes can switch; URL splitting reads it once per process).
"""

from __future__ import annotations

import functools
import itertools
import os
import unicodedata
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:
    from . import _native as ext
    import_error: Optional[ImportError] = None
except ImportError as error:  # not built (a checkout used without `pip install -e .`)
    ext = None
    import_error = error


def available() -> bool:
    """Whether the callers should use `ext`: built, and not switched off by EUROTRON_NATIVE=0."""
    return ext is not None and os.environ.get("EUROTRON_NATIVE", "1") != "0"


def flatten_token_ids(ids: Sequence[Sequence[int]], eos: int, vocab_size: int,
                      dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray]:
    """Every id list followed by `eos`, as one `dtype` (uint16 or uint32) array, and the cumulative
    ends (int64, EOS included). ValueError naming the id when one lies outside [0, vocab_size) or
    does not fit `dtype`."""
    dtype = np.dtype(dtype)
    total = sum(map(len, ids)) + len(ids)
    if available():
        flat, ends = np.empty(total, dtype=dtype), np.empty(len(ids), dtype=np.int64)
        ext.flatten_ids(ids, eos, vocab_size, flat, ends)
        return flat, ends
    limit = min(vocab_size, int(np.iinfo(dtype).max) + 1)
    if not 0 <= eos < limit:
        raise ValueError(f"eos id {eos} outside [0, {limit})")
    ends = np.cumsum([len(seq) + 1 for seq in ids], dtype=np.int64)
    with_eos = itertools.chain.from_iterable(itertools.chain(seq, (eos,)) for seq in ids)
    try:
        flat = np.fromiter(with_eos, dtype=dtype, count=total)
    except (OverflowError, ValueError):
        flat = None  # an id numpy cannot cast: found and named below
    if flat is None or (total and int(flat.max()) >= limit):
        for i, seq in enumerate(ids):
            for token in seq:
                if not 0 <= token < vocab_size:
                    raise ValueError(f"token id {token!r} (text {i}) outside [0, {vocab_size})")
                if token >= limit:
                    raise ValueError(f"token id {token!r} (text {i}) does not fit the output's items (< {limit})")
        raise ValueError("token ids: not a sequence of int sequences")
    return flat, ends


def join_utf8(texts: Sequence[str], separator: bytes = b"") -> Tuple[bytes, np.ndarray]:
    """The UTF-8 of `texts` back to back, each followed by `separator`, and the cumulative ends
    (int64, separator included). The C path reuses the UTF-8 CPython keeps on each str, so the
    next consumer of the same strings gets it for free."""
    ends = np.empty(len(texts), dtype=np.int64)
    if available():
        return ext.join_utf8(texts, separator, ends), ends
    encoded = [t.encode("utf-8") for t in texts]
    np.cumsum([len(e) + len(separator) for e in encoded], out=ends)
    return separator.join(encoded) + (separator if encoded else b""), ends


def nfc(texts: Sequence[str]) -> List[str]:
    """Each text in Unicode NFC. With the extension, texts that certainly are NFC already (Latin-1,
    or only BMP characters that NFC never changes, see `_nfc_safe_bitmap`) skip the normaliser."""
    if available():
        stable = np.empty(len(texts), dtype=np.uint8)
        ext.nfc_stable(texts, _nfc_safe_bitmap(), stable)
        return [t if keep else unicodedata.normalize("NFC", t) for t, keep in zip(texts, stable.tolist())]
    return [t if t.isascii() else unicodedata.normalize("NFC", t) for t in texts]


@functools.lru_cache(maxsize=1)
def _nfc_safe_bitmap() -> np.ndarray:
    """One bit per BMP character that leaves any text made of such characters unchanged under NFC:
    combining class 0, its own NFC, never the second character of a canonical composition (nor a
    Hangul jamo vowel or final consonant, which compose algorithmically), and if it decomposes, its
    decomposition starts with such a character too. Then NFD of the text only splits characters into
    a starter and its marks, reordering stays inside each, and composition rebuilds each character
    and cannot join two (the starter after a boundary is never a second). ~20 ms, once per process."""
    canonical = [unicodedata.decomposition(chr(c)) for c in range(65536)]
    canonical = [d if d and not d.startswith("<") else "" for d in canonical]
    seconds = {int(d.split()[1], 16) for d in canonical if len(d.split()) == 2}
    seconds.update(range(0x1160, 0x1200))
    seconds.update(range(0xD800, 0xE000))  # surrogates: never text

    def inert(c: int) -> bool:
        ch = chr(c)
        if c in seconds or unicodedata.combining(ch):
            return False
        if not canonical[c]:
            return True
        return unicodedata.normalize("NFC", ch) == ch and ord(unicodedata.normalize("NFD", ch)[0]) not in seconds

    return np.packbits(np.array([inert(c) for c in range(65536)]), bitorder="little")
