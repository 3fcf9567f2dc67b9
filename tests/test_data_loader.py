"""The training loader: sample contents, determinism, resume, DP-size independence, batch fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eurotron.data.errors import DataError
from eurotron.data.loader import (
    BatchLoader,
    FeistelPermutation,
    GlobalSampler,
    TokenDataset,
    eval_batches,
    make_batch,
)
from eurotron.data.manifest import FORMAT, FORMAT_VERSION, write_manifest
from eurotron.data.shards import ShardWriter

EOS = 2
VOCAB = 5000


def synthetic_docs(n, seed=0):
    """Documents whose tokens say which document they are (ids >= 3), each ending with EOS."""
    rng = np.random.default_rng(seed)
    return [np.append(np.full(int(rng.integers(1, 40)), 3 + i % (VOCAB - 3)), EOS) for i in range(n)]


def make_dataset(root, splits, shard_tokens=10**9):
    """A prepared-dataset directory (manifest + shards) holding `splits`: name → token lists."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "tokenizer": {"vocab_size": VOCAB, "eos_id": EOS}, "splits": {}}
    for name, docs in splits.items():
        writer = ShardWriter(root / name, name, VOCAB, shard_tokens=shard_tokens)
        for doc in docs:
            writer.add_document(doc)
        shards = writer.close()
        manifest["splits"][name] = {"docs": len(docs), "tokens": sum(s["tokens"] for s in shards),
                                    "shards": shards}
    write_manifest(root, manifest)
    return root


@pytest.fixture
def docs():
    return synthetic_docs(300)


@pytest.fixture
def dataset(tmp_path, docs):
    # Several shards, so reads cross shard boundaries in the virtual stream.
    make_dataset(tmp_path, {"train": docs, "eval": synthetic_docs(40, seed=9)}, shard_tokens=1000)
    return TokenDataset(tmp_path, "train", verify=True)


def windows(stream, seq_len):
    count = (len(stream) - 1) // seq_len
    return [tuple(stream[k * seq_len:k * seq_len + seq_len + 1]) for k in range(count)]


def test_dataset_opens_every_shard(dataset, docs):
    assert len(dataset.shards) > 3
    assert dataset.num_docs == len(docs)
    assert dataset.num_tokens == sum(len(d) for d in docs)
    for i in (0, 57, len(docs) - 1):
        np.testing.assert_array_equal(dataset.doc(i), docs[i])
    assert dataset.has_split("eval") and not dataset.has_split("test")
    assert dataset.vocab_size == VOCAB and dataset.eos_id == EOS
    assert dataset.tokenizer_dir == dataset.path / "tokenizer"


def test_unshuffled_samples_are_consecutive_windows(dataset, docs):
    seq_len = 16
    sampler = GlobalSampler(dataset, seq_len, seed=0, shuffle=False)
    stream = np.concatenate(docs)
    expected = windows(stream, seq_len)
    assert sampler.samples_per_epoch == len(expected)
    got = sampler.samples(np.arange(len(expected)))
    assert [tuple(row) for row in got] == expected
    # Epoch 1 repeats epoch 0 when nothing is shuffled.
    np.testing.assert_array_equal(sampler.samples(np.arange(5) + len(expected)), got[:5])


def test_shuffled_epoch_covers_its_stream_once(dataset, docs):
    seq_len = 16
    sampler = GlobalSampler(dataset, seq_len, seed=7, shuffle=True)
    count = sampler.samples_per_epoch
    for epoch in (0, 1):
        order, _, _ = sampler._epoch(epoch)
        assert sorted(order.tolist()) == list(range(len(docs)))
        stream = np.concatenate([docs[i] for i in order])
        got = sampler.samples(np.arange(epoch * count, (epoch + 1) * count))
        assert sorted(tuple(row) for row in got) == sorted(windows(stream, seq_len))
        # Sample order is shuffled too, not just document order.
        assert [tuple(row) for row in got] != windows(stream, seq_len)
    epoch0 = sampler.samples(np.arange(count))
    epoch1 = sampler.samples(np.arange(count, 2 * count))
    assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 64, 1000, 4097])
def test_feistel_is_a_bijection(n):
    perm = FeistelPermutation(n, (1, 2, 3))
    values = perm(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
    np.testing.assert_array_equal(values, FeistelPermutation(n, (1, 2, 3))(np.arange(n)))
    if n >= 64:
        assert not np.array_equal(values, FeistelPermutation(n, (1, 2, 4))(np.arange(n)))
        assert not np.array_equal(values, np.arange(n))


def collect(loader, steps):
    return [torch.cat([mb["input_ids"] for mb in loader.next_step()]) for _ in range(steps)]


def test_determinism_and_seed(dataset):
    a = collect(BatchLoader(dataset, 32, 8, 2, seed=1), 4)
    b = collect(BatchLoader(dataset, 32, 8, 2, seed=1), 4)
    c = collect(BatchLoader(dataset, 32, 8, 2, seed=2), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_resume_is_exact(dataset):
    uninterrupted = BatchLoader(dataset, 32, 8, 2, seed=3)
    steps = [uninterrupted.next_step() for _ in range(7)]
    first = BatchLoader(dataset, 32, 8, 2, seed=3)
    for _ in range(4):
        first.next_step()
    state = first.state_dict()
    assert state["consumed_samples"] == 32
    resumed = BatchLoader(dataset, 32, 8, 2, seed=3)
    resumed.load_state_dict(state)
    for want in steps[4:]:
        got = resumed.next_step()
        assert len(got) == len(want) == 4
        for g, w in zip(got, want):
            for key in ("input_ids", "labels", "loss_mask", "position_ids"):
                assert torch.equal(g[key], w[key])
    # The constructor argument does the same as load_state_dict.
    direct = BatchLoader(dataset, 32, 8, 2, seed=3, consumed_samples=32)
    assert torch.equal(direct.next_step()[0]["input_ids"], steps[4][0]["input_ids"])


@pytest.mark.parametrize("dp_size, micro", [(2, 2), (4, 1), (2, 4)])
def test_data_parallel_ranks_split_the_global_batch(dataset, dp_size, micro):
    reference = collect(BatchLoader(dataset, 24, 8, 8, seed=5), 5)
    ranks = [BatchLoader(dataset, 24, 8, micro, dp_rank=r, dp_size=dp_size, seed=5) for r in range(dp_size)]
    for want in reference:
        got = torch.cat([torch.cat([mb["input_ids"] for mb in rank.next_step()]) for rank in ranks])
        assert torch.equal(got, want)


def test_resume_into_another_dp_size(dataset):
    reference = collect(BatchLoader(dataset, 24, 8, 4, seed=5), 6)
    single = BatchLoader(dataset, 24, 8, 4, seed=5)
    for _ in range(3):
        single.next_step()
    state = single.state_dict()
    ranks = [BatchLoader(dataset, 24, 8, 2, dp_rank=r, dp_size=2, seed=5) for r in range(2)]
    for rank in ranks:
        rank.load_state_dict(state)
    for want in reference[3:]:
        got = torch.cat([torch.cat([mb["input_ids"] for mb in rank.next_step()]) for rank in ranks])
        assert torch.equal(got, want)


def test_epoch_rollover(dataset):
    loader = BatchLoader(dataset, 64, 16, 4, seed=11)
    per_epoch = loader.samples_per_epoch
    steps = per_epoch // 16 + 2
    seen = collect(loader, steps)
    assert loader.epoch == 1 and loader.consumed_samples == steps * 16
    flat = torch.cat(seen)
    sampler = GlobalSampler(dataset, 64, seed=11, shuffle=True)
    expected = sampler.samples(np.arange(steps * 16))[:, :-1]
    assert torch.equal(flat, torch.from_numpy(expected))
    # The first epoch holds every window once, the second starts a new order.
    assert len({tuple(row.tolist()) for row in flat[:per_epoch]}) == per_epoch
    assert not torch.equal(flat[per_epoch:per_epoch + 8], flat[:8])


def test_batch_fields_at_document_boundaries():
    tokens = np.array([[5, 6, EOS, 7, 8, EOS, 9, 10],
                       [11, 12, 13, 14, EOS, EOS, 15, 16]])
    batch = make_batch(tokens, EOS)
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long
    assert batch["position_ids"].dtype == torch.long and batch["loss_mask"].dtype == torch.bool
    assert batch["input_ids"].tolist() == [[5, 6, EOS, 7, 8, EOS, 9], [11, 12, 13, 14, EOS, EOS, 15]]
    assert batch["labels"].tolist() == [[6, EOS, 7, 8, EOS, 9, 10], [12, 13, 14, EOS, EOS, 15, 16]]
    assert batch["loss_mask"].tolist() == [[True, True, False, True, True, False, True],
                                           [True, True, True, True, False, False, True]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 4, 0, 0]]


def test_loader_batches_follow_document_boundaries(dataset):
    loader = BatchLoader(dataset, 48, 8, 4, seed=0)
    for mb in loader.next_step() + loader.next_step():
        inputs, positions, mask = mb["input_ids"], mb["position_ids"], mb["loss_mask"]
        assert inputs.shape == (4, 48)
        assert torch.equal(mask, inputs != EOS)
        assert torch.all(positions[:, 0] == 0)
        after_eos = inputs[:, :-1] == EOS
        assert torch.all(positions[:, 1:][after_eos] == 0)
        assert torch.all(positions[:, 1:][~after_eos] == positions[:, :-1][~after_eos] + 1)
        assert torch.equal(mb["labels"][:, :-1], inputs[:, 1:])


def test_sample_starting_mid_document(dataset, docs):
    # docs are constant-valued: the first sample of an unshuffled stream at offset seq_len starts
    # inside some document, and its positions still start at 0.
    loader = BatchLoader(dataset, 5, 2, 2, shuffle=False)
    batch = loader.next_step()[0]
    stream = np.concatenate(docs)
    assert batch["input_ids"][1].tolist() == stream[5:10].tolist()
    assert batch["position_ids"][1, 0] == 0


def test_batch_transform_is_applied(dataset):
    def drop_first(batch):
        batch["loss_mask"][:, 0] = False
        return batch

    loader = BatchLoader(dataset, 16, 4, 2, batch_transform=drop_first)
    assert all(not mb["loss_mask"][:, 0].any() for mb in loader.next_step())


def test_divisibility_and_argument_errors(dataset):
    with pytest.raises(DataError, match="multiple of data.micro_batch_size"):
        BatchLoader(dataset, 16, 12, 4, dp_size=2)
    with pytest.raises(DataError, match="dp_rank"):
        BatchLoader(dataset, 16, 8, 2, dp_rank=2, dp_size=2)
    with pytest.raises(DataError, match="data.seq_len"):
        BatchLoader(dataset, 0, 8, 2)


def test_changed_stream_settings_refuse_to_resume(dataset):
    state = BatchLoader(dataset, 16, 8, 2, seed=1).state_dict()
    with pytest.raises(DataError, match="data.seq_len"):
        BatchLoader(dataset, 32, 8, 2, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="data.seed"):
        BatchLoader(dataset, 16, 8, 2, seed=2).load_state_dict(state)
    # A different global batch size is fine: the position is a sample count.
    loader = BatchLoader(dataset, 16, 4, 2, seed=1)
    loader.load_state_dict({**state, "consumed_samples": 8})
    assert loader.consumed_samples == 8


def test_eval_batches_are_fixed_and_capped(tmp_path):
    eval_docs = synthetic_docs(20, seed=4)
    make_dataset(tmp_path, {"train": synthetic_docs(50), "eval": eval_docs})
    dataset = TokenDataset(tmp_path, "eval")
    first = list(eval_batches(dataset, 8, 4, 2, num_batches=3))
    again = list(eval_batches(dataset, 8, 4, 2, num_batches=3))
    assert len(first) == 3 and len(first[0]) == 2
    stream = np.concatenate(eval_docs)
    got = torch.cat([mb["input_ids"] for step in first for mb in step])
    assert got.tolist() == [list(w[:-1]) for w in windows(stream, 8)[:12]]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for x, y in zip(first, again) for a, b in zip(x, y))
    per_epoch = (len(stream) - 1) // 8
    assert len(list(eval_batches(dataset, 8, 4, 2, num_batches=10**6))) == per_epoch // 4
    ranks = [list(eval_batches(dataset, 8, 4, 1, num_batches=2, dp_rank=r, dp_size=2)) for r in range(2)]
    both = torch.cat([torch.cat([mb["input_ids"] for mb in ranks[r][0]]) for r in range(2)])
    assert torch.equal(both, torch.cat([mb["input_ids"] for mb in first[0]]))


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="eurotron-prepare"):
        TokenDataset(tmp_path / "nowhere", "train")
    make_dataset(tmp_path, {"train": synthetic_docs(3)})
    with pytest.raises(DataError, match="no 'eval' split"):
        TokenDataset(tmp_path, "eval")
    tiny = TokenDataset(tmp_path, "train")
    with pytest.raises(DataError, match="lower data.seq_len"):
        BatchLoader(tiny, 10_000, 2, 1)
