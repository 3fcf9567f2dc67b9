"""PII scrubbing patterns (incl. IBAN checksums) and deduplication (exact, MinHash-LSH, the index)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from eurotron.data.errors import DataError
from eurotron.data import native
from eurotron.data.filters.dedup import DedupKeys, MinHasher, exact_key, exact_keys, lsh_parameters
from eurotron.data.filters.dedup_index import Deduplicator, KeyIndex, KeyTable
from eurotron.data.filters.pii import PiiScrubber, iban_valid


@pytest.fixture(scope="module")
def scrubber():
    return PiiScrubber()


# -------------------------------------------------------------------------------------------- PII
@pytest.mark.parametrize("text, expected, counts", [
    ("Write to jane.doe+eu@mail.example.org.", "Write to <email-pii>.", {"email": 1}),
    ("(a_b-c@sub.domain.eu), x@y, @handle, a@b.c", "(<email-pii>), x@y, @handle, a@b.c", {"email": 1}),
    ("Server 192.0.2.15:8080 and 10.20.0.4.", "Server <ip-pii>:8080 and <ip-pii>.", {"ipv4": 2}),
    ("version 2.4.0, 256.1.2.3, 1.2.3.4.5, 3.14", "version 2.4.0, 256.1.2.3, 1.2.3.4.5, 3.14", {}),
    ("v6 2001:db8::42, fe80::1ff:fe23:4567:890a and ::ffff:192.0.2.1",
     "v6 <ip-pii>, <ip-pii> and <ip-pii>", {"ipv6": 3}),
    ("at 12:30:45, MAC 00:1a:2b:3c:4d:5e, ::1, C++ std::vector",
     "at 12:30:45, MAC 00:1a:2b:3c:4d:5e, ::1, C++ std::vector", {}),
    ("IBAN DE89 3704 0044 0532 0130 00 EUR", "IBAN <iban-pii> EUR", {"iban": 1}),
    ("FR14 2004 1010 0505 0001 3M02 606 and GB82WEST12345698765432.", "<iban-pii> and <iban-pii>.", {"iban": 2}),
    ("bad checksum DE89 3704 0044 0532 0130 01, unknown XX12 3456 7890 1234 56",
     "bad checksum DE89 3704 0044 0532 0130 01, unknown XX12 3456 7890 1234 56", {}),
    ("Call +49 30 8847 2210 (evenings) or +351 21 000 4821.", "Call <phone-pii> (evenings) or <phone-pii>.",
     {"phone": 2}),
    ("Tel.: 030 1234567, puh. 09 4572 3318; room 0123 floor 2", "Tel.: <phone-pii>, puh. <phone-pii>; room 0123 floor 2",
     {"phone": 2}),
    ("+49 30 8847 2210 2024 winners", "<phone-pii> 2024 winners", {"phone": 1}),
    ("Timetable 06 45 07 15 08 45 2023-06-29, +1 5, 1+2", "Timetable 06 45 07 15 08 45 2023-06-29, +1 5, 1+2", {}),
])
def test_pii_patterns(scrubber, text, expected, counts):
    assert scrubber.scrub(text) == (expected, counts)


def test_iban_checksums():
    for iban in ("DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32", "FR14 2004 1010 0505 0001 3M02 606",
                 "NL91ABNA0417164300", "BE68539007547034", "NO9386011117947"):
        assert iban_valid(iban), iban
        digits = iban.replace(" ", "")
        for pos in (4, len(digits) - 1):  # any single changed digit breaks mod 97
            swapped = digits[:pos] + str((int(digits[pos], 36) + 1) % 10) + digits[pos + 1:]
            assert not iban_valid(swapped), swapped
    assert not iban_valid("DE89 3704 0044 0532 0130")  # wrong length for DE
    assert not iban_valid("ZZ89 3704 0044 0532 0130 00")


def test_pii_batch_equals_single_and_kinds_select(scrubber):
    texts = ["a@b.eu 192.0.2.1", "nothing here", "", "DE89 3704 0044 0532 0130 00", "+33 1 45 67 89 12"]
    scrubbed, found = scrubber.scrub_batch(texts)
    singles = [scrubber.scrub(t) for t in texts]
    assert scrubbed == [t for t, _ in singles] and found == {i: c for i, (_, c) in enumerate(singles) if c}
    only_email = PiiScrubber(["email"])
    assert only_email.scrub("a@b.eu 192.0.2.1") == ("<email-pii> 192.0.2.1", {"email": 1})
    with pytest.raises(DataError, match="unknown ssn"):
        PiiScrubber(["email", "ssn"])


# ------------------------------------------------------------------------------------------ dedup
def _words(rng, n):
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))


def test_exact_key_normalisation():
    import hashlib

    assert exact_key("  Hello\tWORLD \n\n again ") == int.from_bytes(
        hashlib.blake2b(b"hello world again", digest_size=8).digest(), "little")
    # The same words in the same order: case, spacing and punctuation do not matter.
    assert exact_key("Hello World") == exact_key("hello   world\n") == exact_key("Hello, world!")
    assert exact_key("hello world") != exact_key("hello worlds") != exact_key("world hello")
    assert exact_key("Cafe\u0301") == exact_key("Café")  # NFC
    assert exact_key("ÉTÉ ÜBER ØRE") == exact_key("été über øre")  # accented Latin capitals fold too
    assert exact_key("été") != exact_key("ete")
    assert exact_key("!!!") != exact_key("???")  # texts without words: their bytes
    texts = ["a  b", " ", "", "x\ny", "A B ", "!!!", "a-b"]
    assert exact_keys(texts).tolist() == [exact_key(t) for t in texts]
    assert exact_keys(texts)[0] == exact_keys(texts)[4] == exact_keys(texts)[6]


def test_lsh_parameters_put_the_threshold_on_the_s_curve():
    for threshold, perms in ((0.8, 128), (0.5, 64), (0.9, 256)):
        bands, rows = lsh_parameters(threshold, perms)
        assert bands * rows <= perms
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1, (threshold, bands, rows)
    with pytest.raises(DataError, match="threshold"):
        lsh_parameters(1.0, 128)


def test_minhash_estimates_jaccard_and_is_deterministic():
    mh = MinHasher(num_perm=128, shingle_words=5, threshold=0.8)
    rng = random.Random(0)
    base = _words(rng, 400).split()
    errors = []
    for changed in (0, 20, 60, 150):
        other = base[:len(base) - changed] + _words(rng, changed).split()
        a, b = " ".join(base), " ".join(other)
        hashes, counts = mh.shingle_hashes([a, b])
        sig = mh.signatures(hashes, counts)
        sa = {tuple(base[i:i + 5]) for i in range(len(base) - 4)}
        sb = {tuple(other[i:i + 5]) for i in range(len(other) - 4)}
        errors.append(abs((sig[0] == sig[1]).mean() - len(sa & sb) / len(sa | sb)))
    assert max(errors) < 0.15 and np.mean(errors) < 0.08
    texts = [" ".join(base), "Short text.", "", "!!! ???", "EINS zwei", "eins   ZWEI"]
    keys, has = mh.band_keys(texts)
    again, _ = MinHasher(128, 5, 0.8).band_keys(texts)
    assert np.array_equal(keys, again)  # the same in every process
    assert has.tolist() == [True, True, False, False, True, True]
    assert np.array_equal(keys[4], keys[5])  # ASCII case and spacing do not matter
    assert not keys[2].any()


@pytest.fixture(params=["native", "numpy"])
def dedup_path(request, monkeypatch):
    if request.param == "native" and native.ext is None:
        pytest.skip(f"the C extension is not built ({native.import_error})")
    monkeypatch.setenv("EUROTRON_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def test_deduplicator_keeps_first_occurrence_in_order(dedup_path):
    rng = random.Random(1)
    base = _words(rng, 300)
    near = base.rsplit(" ", 3)[0] + " changed ending here"
    texts = [base, _words(rng, 300), "  " + base.upper() + " ", near, _words(rng, 300), near, "x"]
    mh = MinHasher(128, 5, 0.8)

    def run(batches):
        dedup = Deduplicator(exact=True, near=True)
        out = []
        for chunk in batches:
            bands, has = mh.band_keys(chunk)
            out += dedup.decide(DedupKeys(np.array([exact_key(t) for t in chunk], dtype=np.uint64), bands, has))
        return out

    # The second copy of `near` is compared with what was kept: `near` itself was not, `base` was.
    expected = [None, None, "dedup_exact", "dedup_near", None, "dedup_near", None]
    assert run([texts]) == expected
    assert run([[t] for t in texts]) == expected  # batch boundaries do not matter
    exact_only = Deduplicator(exact=True, near=False)
    bands, has = mh.band_keys(texts)
    reasons = exact_only.decide(DedupKeys(np.array([exact_key(t) for t in texts], dtype=np.uint64), bands, has))
    assert reasons == [None, None, "dedup_exact", None, None, "dedup_exact", None]


def test_native_and_numpy_decisions_agree_on_colliding_keys(monkeypatch):
    if native.ext is None:
        pytest.skip(f"the C extension is not built ({native.import_error})")
    rng = np.random.default_rng(0)
    for trial in range(200):
        exact_on, near_on = bool(rng.random() < 0.8), bool(rng.random() < 0.8)
        width, pool = int(rng.integers(0, 5)), int(rng.integers(1, 300))  # small pools: many collisions
        monkeypatch.setenv("EUROTRON_NATIVE", "1")
        fast = Deduplicator(exact_on, near_on)
        monkeypatch.setenv("EUROTRON_NATIVE", "0")
        reference = Deduplicator(exact_on, near_on)
        assert fast.native and not reference.native
        for _ in range(5):
            n = int(rng.integers(0, 400))
            keys = DedupKeys(rng.integers(0, pool, n).astype(np.uint64),
                             rng.integers(0, 3 * pool, (n, width)).astype(np.uint64), rng.random(n) < 0.9)
            assert fast.decide(keys) == reference.decide(keys), trial


def test_key_table_grows_and_keeps_every_key_including_zero():
    if native.ext is None:
        pytest.skip(f"the C extension is not built ({native.import_error})")
    rng = np.random.default_rng(1)
    table, reference = KeyTable(capacity=4), set()
    for step in range(40):
        keys = np.concatenate([rng.integers(0, 2**64 - 1, int(rng.integers(1, 3000)), dtype=np.uint64),
                               np.array([0, step], dtype=np.uint64)])
        table.reserve(len(keys))
        table.count += native.ext.set_add_keys(table.slots, keys)
        reference.update(int(k) for k in keys)
        assert len(table) == len(reference) <= (len(table.slots) - 1) * KeyTable.MAX_LOAD
    stored = set(int(k) for k in table.slots[:-1] if k) | ({0} if table.slots[-1] else set())
    assert stored == reference
    with pytest.raises(ValueError, match="power of two"):
        native.ext.set_add_keys(np.zeros(6, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def test_key_index_is_a_set():
    rng = np.random.default_rng(0)
    index, reference = KeyIndex(), set()
    for _ in range(60):
        keys = rng.integers(0, 2**63, size=int(rng.integers(1, 500)), dtype=np.uint64)
        probe = np.concatenate([keys[:10], rng.integers(0, 2**63, size=10, dtype=np.uint64)])
        assert index.contains(probe).tolist() == [int(k) in reference for k in probe]
        index.add(keys)
        reference.update(int(k) for k in keys)
    assert len(index) == len(reference) and len(index.runs) <= 12
    assert index.contains(np.array(sorted(reference)[:5], dtype=np.uint64)).all()
