"""Issue #12, points 5 and 7: prepared shards are checked on open (sizes, ids, sha256 on request),
and the data/convert/generate CLIs answer a user error with one clear message, never a traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from eurotron.data import integrity
from eurotron.data.blend import open_train_dataset
from eurotron.data.errors import DataError, ShardError
from eurotron.data.loader import TokenDataset
from eurotron.data.manifest import FORMAT, FORMAT_VERSION, read_manifest, write_manifest
from eurotron.data.shards import ShardWriter

EOS, VOCAB = 2, 500


def make_dataset(root, n_docs=40, shard_tokens=200, vocab=VOCAB):
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "tokenizer": {"vocab_size": vocab, "eos_id": EOS}, "splits": {}}
    writer = ShardWriter(root / "train", "train", vocab, shard_tokens=shard_tokens)
    rng = np.random.default_rng(0)
    for _ in range(n_docs):
        writer.add_document(np.append(rng.integers(3, vocab, size=int(rng.integers(5, 30))), EOS))
    shards = writer.close()
    manifest["splits"]["train"] = {"docs": n_docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    write_manifest(root, manifest)
    return root


def _poke(path, position, value):
    """Overwrite one uint16 token in place (same size: only a scan or a checksum can tell)."""
    tokens = np.memmap(path, dtype="<u2", mode="r+")
    tokens[position] = value
    tokens.flush()
    del tokens


# ------------------------------------------------------------------------------------ point 5
def test_prepare_records_max_token_id_per_shard(tmp_path):
    make_dataset(tmp_path)
    for entry in read_manifest(tmp_path)["splits"]["train"]["shards"]:
        tokens = np.fromfile(tmp_path / "train" / entry["bin"], dtype="<u2")
        assert entry["max_token_id"] == int(tokens.max())
    assert TokenDataset(tmp_path).max_token_id == max(
        e["max_token_id"] for e in read_manifest(tmp_path)["splits"]["train"]["shards"])


def test_truncated_and_missing_shards_named_in_one_error(tmp_path):
    make_dataset(tmp_path)
    shards = sorted((tmp_path / "train").glob("*.bin"))
    assert len(shards) >= 3
    with open(shards[0], "r+b") as handle:
        handle.truncate(10)
    shards[1].with_suffix(".idx").unlink()
    with pytest.raises(ShardError) as err:
        TokenDataset(tmp_path)
    message = str(err.value)
    assert f"{shards[0]} is 10 bytes" in message and "truncated" in message
    assert f"{shards[1].with_suffix('.idx')} is missing" in message
    assert "re-run eurotron-prepare" in message


def test_out_of_range_id_named_with_shard_max_and_vocab(tmp_path):
    make_dataset(tmp_path)
    manifest = read_manifest(tmp_path)
    entry = manifest["splits"]["train"]["shards"][1]
    _poke(tmp_path / "train" / entry["bin"], 3, 777)
    # An older manifest (no max_token_id): the loader scans the shard once and stamps the result.
    for e in manifest["splits"]["train"]["shards"]:
        del e["max_token_id"]
    write_manifest(tmp_path, manifest)
    with pytest.raises(DataError, match=rf"{entry['bin']} holds token id 777.*vocabulary of {VOCAB}"):
        TokenDataset(tmp_path)


def test_recorded_max_is_range_checked_and_model_vocab_too(tmp_path):
    make_dataset(tmp_path)
    manifest = read_manifest(tmp_path)
    manifest["splits"]["train"]["shards"][0]["max_token_id"] = VOCAB + 5  # as if written by a bigger tokenizer
    write_manifest(tmp_path, manifest)
    with pytest.raises(DataError, match=f"holds token id {VOCAB + 5}"):
        TokenDataset(tmp_path)
    make_dataset(tmp_path / "ok")
    dataset = TokenDataset(tmp_path / "ok")
    dataset.check_vocab(VOCAB)
    with pytest.raises(DataError, match=rf"model.vocab_size=100 is too small.*token id {dataset.max_token_id}"):
        dataset.check_vocab(100)


def test_id_scan_is_stamped_by_size_and_mtime(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    manifest = read_manifest(tmp_path)
    for e in manifest["splits"]["train"]["shards"]:
        del e["max_token_id"]
    write_manifest(tmp_path, manifest)
    scans = []
    real_scan = integrity._scan_max
    monkeypatch.setattr(integrity, "_scan_max", lambda tokens: scans.append(1) or real_scan(tokens))
    TokenDataset(tmp_path)
    first = len(scans)
    assert first == len(manifest["splits"]["train"]["shards"])
    TokenDataset(tmp_path)
    assert len(scans) == first  # cached
    bin_file = tmp_path / "train" / manifest["splits"]["train"]["shards"][0]["bin"]
    _poke(bin_file, 0, 900)
    os.utime(bin_file, ns=(1, 1))  # a changed mtime invalidates the stamp
    with pytest.raises(DataError, match="holds token id 900"):
        TokenDataset(tmp_path)


def test_verify_checksums_hashes_once_and_catches_same_size_corruption(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from eurotron.config import DataConfig

    make_dataset(tmp_path)
    data = OmegaConf.structured(DataConfig(path=str(tmp_path)))
    assert data.verify_checksums is False
    hashed = []
    real = integrity._sha256
    monkeypatch.setattr(integrity, "_sha256", lambda p: hashed.append(p) or real(p))
    open_train_dataset(data)
    assert hashed == []  # off by default
    data.verify_checksums = True
    open_train_dataset(data)
    count = len(hashed)
    assert count > 0
    open_train_dataset(data)
    assert len(hashed) == count  # the stamp says these files passed
    bin_file = tmp_path / "train" / "train_00001.bin"
    _poke(bin_file, 2, 7)
    os.utime(bin_file, ns=(5, 5))
    with pytest.raises(ShardError, match=r"train_00001.bin does not match its manifest checksum"):
        open_train_dataset(data)


def test_read_only_dataset_stamps_in_user_cache(tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity.os, "access", lambda path, mode: False)  # as a read-only shared copy
    TokenDataset(tmp_path / "ds", verify=True)
    assert not (tmp_path / "ds" / integrity.STAMP_DIR).exists()
    assert list((tmp_path / "cache" / "eurotron" / "stamps").rglob("*.json"))


def test_writer_refuses_ids_outside_the_vocabulary(tmp_path):
    writer = ShardWriter(tmp_path, "train", 300)
    writer.add_documents(np.array([5, 299, 2, 301, 2], dtype=np.uint16), [3, 2])
    with pytest.raises(ShardError, match="token id 301 is outside"):
        writer.close()
