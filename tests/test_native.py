"""The C extension (eurotron.data._native) against the numpy code it replaces: bit-for-bit equal
word layouts, dedup keys, PII gates and flattened token ids, on batches made to hit the edges."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import numpy as np
import pytest

from eurotron.data import native
from eurotron.data.filters import pii
from eurotron.data.filters.dedup import MinHasher, WordBatch, exact_keys

needs_ext = pytest.mark.skipif(native.ext is None, reason=f"eurotron.data._native is not built "
                                                          f"(`pip install -e .` builds it): {native.import_error}")


def test_extension_is_built_unless_switched_off():
    """CI builds the extension: without EUROTRON_NATIVE set, a failed build must not go unnoticed."""
    if "EUROTRON_NATIVE" in os.environ:
        pytest.skip("EUROTRON_NATIVE is set: the numpy paths are chosen deliberately")
    assert native.ext is not None, f"eurotron.data._native failed to import: {native.import_error}"
    assert native.available()


def test_switch_forces_numpy(monkeypatch):
    monkeypatch.setenv("EUROTRON_NATIVE", "0")
    assert not native.available()


def both(monkeypatch, fn):
    """fn() on the native path, then on the numpy path."""
    monkeypatch.delenv("EUROTRON_NATIVE", raising=False)
    assert native.available()
    fast = fn()
    monkeypatch.setenv("EUROTRON_NATIVE", "0")
    slow = fn()
    monkeypatch.delenv("EUROTRON_NATIVE")
    return fast, slow


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------------ batches
_WORDS = ["the", "Data", "ÉTÉ", "über", "Øre", "naïve", "Привет", "МИР", "Ελλάδα", "日本語", "中文文本", "🙂",
          "x", "A1", "2024", "e-mail", "l'été", "Straße", "ĳ", "Cafe\u0301"]
_SEPARATORS = [" ", "  ", ", ", ". ", "\n", "\t", " -- ", "!?", "/", "", "(", ")"]


def _text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(_WORDS) + rng.choice(_SEPARATORS) for _ in range(words))


def _batches():
    rng = random.Random(7)
    edge = ["", " ", "!!! ???", "...", "one", "ONE", "a b", "é", "\n\n", "x" * 3000, "日本語のテキスト", "Привет, мир!",
            "-" * 50, "A" + " " * 100 + "b"]
    yield edge
    yield [""]
    yield ["!!!"]
    yield ["word"]
    yield [_text(rng, rng.choice([0, 1, 2, 3, 4, 5, 8, 40, 200])) for _ in range(300)]
    yield [_text(rng, 5000), "", _text(rng, 3)]  # a long text beside short ones
    yield edge + [_text(rng, rng.randrange(60)) for _ in range(200)]


BATCHES = list(_batches())


@needs_ext
@pytest.mark.parametrize("texts", BATCHES)
def test_word_layout_and_exact_keys(monkeypatch, texts):
    fast, slow = both(monkeypatch, lambda: WordBatch.of(texts))
    for field in ("clean", "word_starts", "word_ends", "per_text", "first_word"):
        assert_same(getattr(fast, field), getattr(slow, field))
    assert fast.raw == slow.raw and fast.text_ends.tolist() == slow.text_ends.tolist()
    assert_same(*both(monkeypatch, lambda: exact_keys(texts)))
    # Either path's keys from either path's layout.
    assert_same(*both(monkeypatch, lambda: exact_keys(texts, slow)))


def test_word_layout_of_an_empty_batch(monkeypatch):
    batch = WordBatch.of([])
    assert batch.per_text.shape == (0,) and exact_keys([]).shape == (0,)
    keys, has = MinHasher(16, 3, 0.5).band_keys([])
    assert keys.shape[0] == 0 and has.shape == (0,)


@needs_ext
@pytest.mark.parametrize("num_perm, shingle_words, threshold", [
    (128, 5, 0.8), (2, 1, 0.5), (7, 3, 0.9), (64, 2, 0.3), (200, 9, 0.85), (33, 50, 0.7)])
def test_band_keys(monkeypatch, num_perm, shingle_words, threshold):
    mh = MinHasher(num_perm, shingle_words, threshold, seed=num_perm)
    assert mh.bands * mh.rows <= num_perm
    for texts in BATCHES:
        (keys, has), (keys_np, has_np) = both(monkeypatch, lambda: mh.band_keys(texts))
        assert_same(keys, keys_np)
        assert_same(has, has_np)


@needs_ext
def test_band_keys_densify_through_the_fallback_scan(monkeypatch):
    """One-shingle texts over many bins leave most bins empty: some run out of probes."""
    mh = MinHasher(512, 5, 0.8)
    texts = [f"w{i}" for i in range(200)] + ["a b", "a b c d e f"]
    (keys, has), (keys_np, has_np) = both(monkeypatch, lambda: mh.band_keys(texts))
    assert_same(keys, keys_np)
    assert_same(has, has_np)


@needs_ext
def test_exact_keys_are_blake2b_at_every_length(monkeypatch):
    monkeypatch.delenv("EUROTRON_NATIVE", raising=False)
    rng = random.Random(3)
    lengths = [*range(1, 300), 383, 384, 385, 1000, 4096, 100_000]  # around BLAKE2b's 128-byte blocks
    words = ["".join(rng.choice("abcdefgh9") for _ in range(n)) for n in lengths]
    words += ["".join(rng.choice("aé9Ж") for _ in range(n)) for n in range(1, 100)]
    keys = exact_keys(words)
    for word, key in zip(words, keys.tolist()):
        data = bytes(b | 0x20 for b in word.encode())  # one word, its bytes case-folded as WordBatch does
        assert key == int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"), len(data)


@needs_ext
def test_native_calls_release_the_gil_and_stay_deterministic(monkeypatch):
    monkeypatch.delenv("EUROTRON_NATIVE", raising=False)
    mh, texts = MinHasher(), BATCHES[-1]
    expected = mh.band_keys(texts)[0]
    results = []
    threads = [threading.Thread(target=lambda: results.append(mh.band_keys(texts)[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)


# ---------------------------------------------------------------------------------------------- PII
def _pii_batches():
    rng = random.Random(11)
    # Dense in the bytes the gates look at, so every window and ring is exercised, across texts too.
    alphabet = "0000123456789....:::::+@@ ABZab\nTel.é"
    yield ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(400)]
    yield ["AB", "12 x", "DE", "89", "1.2", ".3.4", "a:b:c", ":d:e:f", "+", "4", "0", "123456", "::"]
    yield ["Tel. 030 1234567", "phone: 0301234567 and +49 30 1", "ip 192.168.0.1 and 2001:db8::1", "x@y.eu",
           "IBAN DE89370400440532013000", "", "fe80:0:0:0:0:0:0:1", "kein Telefon 0301234567"]
    yield [rng.choice(["Call +41 44 668 18 00", "Tél. 01 23 45 67 89", "plain text", "", "τηλ 0030 210 1234567",
                       "12:30:45:10:11:12", "1.1.1.1", "Ünïcödé 0 1 2 3 4 5 6"]) for _ in range(300)]
    yield ["abc"]  # fewer than 4 bytes: every gate open
    yield []


@needs_ext
@pytest.mark.parametrize("texts", list(_pii_batches()))
def test_pii_gates(monkeypatch, texts):
    fast, slow = both(monkeypatch, lambda: pii._gates(texts))
    assert set(fast) == set(slow) == set(pii.KINDS)
    for kind in pii.KINDS:
        assert_same(fast[kind], slow[kind])


# ------------------------------------------------------------------------------------------ flatten
@pytest.mark.parametrize("dtype, vocab", [(np.uint16, 32000), (np.uint16, 65536), (np.uint32, 100_000)])
def test_flatten_token_ids(monkeypatch, dtype, vocab):
    rng = random.Random(5)
    ids = [[rng.randrange(vocab) for _ in range(rng.choice([0, 1, 5, 300]))] for _ in range(50)] + [[]]
    expected = np.array([t for seq in ids for t in seq + [vocab - 1]], dtype=dtype)
    runs = both(monkeypatch, lambda: native.flatten_token_ids(ids, vocab - 1, vocab, dtype)) if native.ext else \
        [native.flatten_token_ids(ids, vocab - 1, vocab, dtype)]
    for flat, ends in runs:
        assert_same(flat, expected)
        assert_same(ends, np.cumsum([len(s) + 1 for s in ids], dtype=np.int64))
    assert ids[-1] == []  # the lists are not changed
    for flat, ends in (both(monkeypatch, lambda: native.flatten_token_ids([], 0, vocab, dtype)) if native.ext else []):
        assert flat.shape == ends.shape == (0,) and flat.dtype == np.dtype(dtype) and ends.dtype == np.int64


@pytest.mark.parametrize("switch", ["1", "0"])
@pytest.mark.parametrize("ids, eos, vocab, dtype, named", [
    ([[1, 2], [3, 32000]], 0, 32000, np.uint16, "32000"),
    ([[1, -1]], 0, 32000, np.uint16, "-1"),
    ([[5, 2**70]], 0, 32000, np.uint32, str(2**70)),
    ([[70000]], 0, 100_000, np.uint16, "70000"),  # in the vocabulary, not in uint16
    ([[1]], 32000, 32000, np.uint16, "32000"),  # the EOS itself
    ([], -1, 32000, np.uint16, "-1"),
])
def test_flatten_rejects_ids_outside_the_vocabulary(monkeypatch, switch, ids, eos, vocab, dtype, named):
    if switch == "1" and native.ext is None:
        pytest.skip("eurotron.data._native is not built")
    monkeypatch.setenv("EUROTRON_NATIVE", switch)
    with pytest.raises(ValueError, match=named):
        native.flatten_token_ids(ids, eos, vocab, dtype)


# ------------------------------------------------------------------------------- checked arguments
@needs_ext
def test_the_extension_checks_its_buffers():
    ext = native.ext
    raw, ends = b"ab cd\n", np.array([6], np.int64)
    ok = [np.empty(7, np.uint8), np.empty(3, np.int64), np.empty(3, np.int64), np.empty(1, np.int64),
          np.empty(1, np.int64)]
    assert ext.word_count(raw) == (6, 2)
    ext.word_layout(raw, ends, *ok)
    assert bytes(ok[0][:6]) == b"ab cd " and ok[2][:2].tolist() == [2, 5]
    with pytest.raises(ValueError, match="clean"):
        ext.word_layout(raw, ends, np.empty(6, np.uint8), *ok[1:])  # one short of the size + 1 asked
    with pytest.raises(ValueError, match="word_ends"):
        ext.word_layout(raw, ends, ok[0], ok[1], np.empty(2, np.int64), *ok[3:])
    with pytest.raises(ValueError, match="text_ends"):
        ext.word_layout(raw, np.array([5], np.int64), *ok)
    with pytest.raises(ValueError, match="separator"):
        ext.word_layout(b"ab", np.array([2], np.int64), *ok)
    with pytest.raises(ValueError, match="text_ends"):
        ext.word_layout(raw, ends.astype(np.float64), *ok)  # 8-byte items, but not integers
    with pytest.raises(ValueError, match="out"):
        ext.pii_gates(b"abcdef", np.array([6], np.int64), np.empty(5, bool))
    mh, batch = MinHasher(16, 2, 0.5), WordBatch.of(["a b c", "d"])
    keys, has = np.empty((2, mh.bands), np.uint64), np.empty(2, bool)
    args = [batch.clean, batch.word_starts, batch.word_ends, batch.per_text, batch.first_word, 2, int(mh.seed32), 16,
            mh.probes, mh.band_salt, mh.rows, keys, has]
    ext.band_keys(*args)
    with pytest.raises(ValueError, match="keys"):
        ext.band_keys(*args[:11], np.empty((1, mh.bands), np.uint64), has)
    with pytest.raises(ValueError, match="probes"):
        ext.band_keys(*args[:8], mh.probes + 16, *args[9:])
    with pytest.raises(ValueError, match="word"):
        ext.band_keys(*args[:4], np.array([0, 5], np.int64), *args[5:])
    with pytest.raises(ValueError, match="out"):
        ext.flatten_ids([[1, 2]], 0, 10, np.empty(2, np.uint16), np.empty(1, np.int64))
    with pytest.raises(ValueError, match="out"):
        ext.flatten_ids([[1]], 0, 10, np.empty(2, np.uint8), np.empty(1, np.int64))
    with pytest.raises(TypeError):
        ext.flatten_ids([[1.5]], 0, 10, np.empty(2, np.uint16), np.empty(1, np.int64))


# ------------------------------------------------------------------------------- strings and URLs
NFC_EDGES = [
    "Cafe\u0301 au lait",          # a decomposed accent: composes
    "Ångström \u212b",              # ANGSTROM SIGN: a singleton decomposition
    "\u1100\u1161\u11a8 \uac00\u11a8",  # Hangul jamo, and a syllable followed by a final consonant
    "\u0391\u0301 \u0387 \u037e",  # Greek with a combining acute, ANO TELEIA, Greek question mark
    "\uf900 \u2126 \u00c5",         # a CJK compatibility ideograph, OHM SIGN, Latin-1 Å
    "e\u0327\u0301 a\u0301\u0327",  # combining marks in two orders (reordering)
    "plain ascii", "", "Latin-1 only: déjà vu, Straße", "Кириллица и ελληνικά", "emoji \U0001f600 astral",
]


@needs_ext
def test_nfc_matches_unicodedata_on_edges_and_random_text(monkeypatch):
    import unicodedata

    rng = random.Random(5)
    # Latin, combining marks, Greek and Cyrillic (precomposed too), Devanagari (nukta letters are
    # composition exclusions), Hangul jamo and syllables, Vietnamese and polytonic Greek (two marks).
    pool = [chr(c) for c in (*range(0x20, 0x250), *range(0x300, 0x370), *range(0x370, 0x500), *range(0x900, 0x980),
                             *range(0x1100, 0x1200), *range(0x1EA0, 0x1F00), *range(0x1F00, 0x2000),
                             *range(0xAC00, 0xAC40), 0x212B, 0x2126, 0xF900, 0x1F600)]
    texts = NFC_EDGES + ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 12))) for _ in range(40000)]
    fast, slow = both(monkeypatch, lambda: native.nfc(texts))
    assert fast == slow == [unicodedata.normalize("NFC", t) for t in texts]


@needs_ext
def test_join_utf8_matches_encode_and_join(monkeypatch):
    texts = NFC_EDGES * 3
    for separator in (b"", b"\n"):
        (data, ends), (slow_data, slow_ends) = both(monkeypatch, lambda: native.join_utf8(texts, separator))
        assert data == slow_data == separator.join(t.encode() for t in texts) + separator
        assert_same(ends, slow_ends)
    with pytest.raises(UnicodeEncodeError):
        native.join_utf8(["lone \ud800"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        native.join_utf8(["a", b"b"])


@needs_ext
def test_url_fast_path_in_c_equals_the_regex_one(monkeypatch):
    from eurotron.data.filters import urls

    rng = random.Random(2)
    alphabet = "aZ09.-:/?#@[]_%ü \t"
    prefixes = ["http://", "https://", "HTTP://", "hTtPs://", "ftp://", "http:/", "https://a.eu:", "https://a.",
                "http://x.y:", "https://1.2.3.4:", "https://a.b.c"]
    cases = ["http://" + "a" * 300 + ".eu/", "http://a.eu:\u0661\u0662/", "HtTp://A.B.C.:0/?", "https://a.eu:65535",
             "https://a.eu:65536", "https://a.eu:000443/x", "https://a.eu?q#f", "http://a.eu:123456/", None, 7, " "]
    cases += [rng.choice(prefixes) + "".join(rng.choice(alphabet) for _ in range(rng.randrange(15)))
              for _ in range(50000)]

    def parsed(url):
        try:
            return tuple(urls.parse_url(url))
        except urls.BadUrl as err:
            return "bad", err.kind

    monkeypatch.setattr(urls, "_native_split", native.ext.split_http_url)  # also under EUROTRON_NATIVE=0
    fast = [parsed(url) for url in cases]
    monkeypatch.setattr(urls, "_native_split", None)
    assert fast == [parsed(url) for url in cases]
    with pytest.raises(TypeError):
        native.ext.split_http_url("https://münchen.de/")
