"""Token shards: round trips in both dtypes, roll-over, and clear errors for every kind of damage."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from eurotron.data.errors import DataError, ShardError
from eurotron.data.shards import HEADER, ShardReader, ShardWriter, token_dtype
from eurotron.data.tokenizer import sha256_file


def random_docs(n, vocab_size, seed=0, eos=2, max_len=50):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        body = rng.integers(3, vocab_size, size=int(rng.integers(0, max_len)))
        docs.append(np.append(body, eos).astype(np.int64))
    return docs


def write(tmp_path, docs, vocab_size, shard_tokens=10**9, flush_tokens=1 << 20):
    writer = ShardWriter(tmp_path, "train", vocab_size, shard_tokens=shard_tokens, flush_tokens=flush_tokens)
    for doc in docs:
        writer.add_document(doc)
    return writer.close()


@pytest.mark.parametrize("vocab_size, dtype", [(500, np.uint16), (65536, np.uint16), (70_000, np.uint32)])
def test_round_trip_both_dtypes(tmp_path, vocab_size, dtype):
    docs = random_docs(200, vocab_size, seed=vocab_size)
    if vocab_size > 65536:
        docs[0][0] = 69_999  # an id that does not fit in uint16
    stats = write(tmp_path, docs, vocab_size, flush_tokens=97)  # many flushes
    assert len(stats) == 1 and stats[0]["dtype"] == np.dtype(dtype).name
    reader = ShardReader(tmp_path / "train_00000")
    assert reader.dtype == np.dtype(dtype) == token_dtype(vocab_size)
    assert reader.num_docs == len(docs) == stats[0]["docs"]
    stream = np.concatenate(docs)
    assert reader.num_tokens == len(stream) == stats[0]["tokens"]
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(reader.doc(i), doc)
    np.testing.assert_array_equal(reader.tokens(0, reader.num_tokens), stream)
    np.testing.assert_array_equal(reader.tokens(17, 123), stream[17:123])
    np.testing.assert_array_equal(reader.doc(-1), docs[-1])
    assert (tmp_path / "train_00000.bin").stat().st_size == len(stream) * np.dtype(dtype).itemsize
    # A .bin/.idx suffixed path opens the same shard.
    assert ShardReader(tmp_path / "train_00000.idx").num_docs == len(docs)
    with pytest.raises(IndexError):
        reader.doc(len(docs))


def test_roll_over_keeps_documents_whole_and_checksums(tmp_path):
    docs = random_docs(300, 1000, seed=3)
    stats = write(tmp_path, docs, 1000, shard_tokens=500)
    assert len(stats) > 3
    assert [s["name"] for s in stats] == [f"train_{i:05d}" for i in range(len(stats))]
    for s in stats[:-1]:
        assert s["tokens"] >= 500
    assert sum(s["docs"] for s in stats) == len(docs)
    read_back = []
    for s in stats:
        reader = ShardReader(tmp_path / s["name"], expected=s, verify=True)
        read_back += [reader.doc(i) for i in range(reader.num_docs)]
        assert s["sha256_bin"] == sha256_file(tmp_path / s["bin"])
        assert s["sha256_idx"] == sha256_file(tmp_path / s["idx"])
    assert len(read_back) == len(docs)
    for got, want in zip(read_back, docs):
        np.testing.assert_array_equal(got, want)


def test_writer_rejects_bad_documents(tmp_path):
    writer = ShardWriter(tmp_path, "train", 100)
    with pytest.raises(ShardError, match=r"\[0, 99\]"):
        writer.add_document([5, 100])
    with pytest.raises(ShardError, match="non-empty"):
        writer.add_document([])
    with pytest.raises(ShardError):
        ShardWriter(tmp_path, "x", 100, shard_tokens=0)


@pytest.mark.parametrize("shard_tokens, flush_tokens", [(10**9, 1 << 20), (300, 97), (1, 1), (517, 1 << 20)])
def test_add_documents_writes_what_add_document_writes(tmp_path, shard_tokens, flush_tokens):
    docs = random_docs(300, 1000, seed=shard_tokens)
    one_by_one = write(tmp_path / "single", docs, 1000, shard_tokens, flush_tokens)
    writer = ShardWriter(tmp_path / "batched", "train", 1000, shard_tokens=shard_tokens, flush_tokens=flush_tokens)
    for start in range(0, len(docs), 37):  # batches that cross shard boundaries
        batch = docs[start:start + 37]
        writer.add_documents(np.concatenate(batch), [len(d) for d in batch])
    batched = writer.close()
    assert batched == [{**stat} for stat in one_by_one] and len(batched) > (1 if shard_tokens < 10**9 else 0)
    for stat in batched:
        for key in ("bin", "idx"):
            assert (tmp_path / "batched" / stat[key]).read_bytes() == (tmp_path / "single" / stat[key]).read_bytes()


def test_add_documents_rejects_lengths_that_do_not_add_up(tmp_path):
    writer = ShardWriter(tmp_path, "train", 100)
    with pytest.raises(ShardError, match="add up to the 3 tokens"):
        writer.add_documents([5, 6, 2], [2, 2])
    with pytest.raises(ShardError, match="positive"):
        writer.add_documents([5, 6, 2], [3, 0])
    with pytest.raises(ShardError, match=r"\[0, 99\]"):
        writer.add_documents([5, 100, 2], [3])


@pytest.fixture
def shard(tmp_path):
    stats = write(tmp_path, random_docs(50, 1000, seed=1), 1000)
    return tmp_path / "train_00000", stats[0]


def _patch_idx(prefix, offset, data):
    idx = prefix.with_name(prefix.name + ".idx")
    raw = bytearray(idx.read_bytes())
    raw[offset:offset + len(data)] = data
    idx.write_bytes(bytes(raw))


def _assert_shard_error(prefix, *patterns, **kwargs):
    with pytest.raises(ShardError) as info:
        ShardReader(prefix, **kwargs)
    message = str(info.value)
    assert "eurotron-prepare" in message
    for pattern in patterns:
        assert pattern in message, message
    assert isinstance(info.value, DataError)


def test_bad_magic(shard):
    prefix, _ = shard
    _patch_idx(prefix, 0, b"NOTASHRD")
    _assert_shard_error(prefix, "magic", "train_00000.idx")


def test_bad_version(shard):
    prefix, _ = shard
    _patch_idx(prefix, 8, struct.pack("<I", 99))
    _assert_shard_error(prefix, "version 99", "train_00000.idx")


def test_bad_dtype_code(shard):
    prefix, _ = shard
    _patch_idx(prefix, 12, struct.pack("<I", 7))
    _assert_shard_error(prefix, "dtype")


def test_truncated_bin(shard):
    prefix, _ = shard
    bin_path = prefix.with_name(prefix.name + ".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-6])
    _assert_shard_error(prefix, "train_00000.bin", "truncated")


def test_truncated_idx(shard):
    prefix, _ = shard
    idx = prefix.with_name(prefix.name + ".idx")
    idx.write_bytes(idx.read_bytes()[:-8])
    _assert_shard_error(prefix, "train_00000.idx", "truncated")
    idx.write_bytes(idx.read_bytes()[:10])
    _assert_shard_error(prefix, "header")


def test_offsets_not_monotone(shard):
    prefix, _ = shard
    _patch_idx(prefix, HEADER.size + 8 * 3, struct.pack("<q", 10**6))
    _assert_shard_error(prefix, "offsets")


@pytest.mark.parametrize("suffix", [".idx", ".bin"])
def test_missing_file(shard, suffix):
    prefix, _ = shard
    prefix.with_name(prefix.name + suffix).unlink()
    _assert_shard_error(prefix, "missing", f"train_00000{suffix}")


def test_checksum_mismatch_only_with_verify(shard):
    prefix, stats = shard
    bin_path = prefix.with_name(prefix.name + ".bin")
    raw = bytearray(bin_path.read_bytes())
    raw[10] ^= 0xFF  # same size, different content
    bin_path.write_bytes(bytes(raw))
    ShardReader(prefix, expected=stats)  # sizes still agree: only the checksum can tell
    _assert_shard_error(prefix, "checksum", "train_00000.bin", expected=stats, verify=True)


def test_manifest_count_mismatch(shard):
    prefix, stats = shard
    _assert_shard_error(prefix, "manifest", expected={**stats, "tokens": stats["tokens"] + 1})
