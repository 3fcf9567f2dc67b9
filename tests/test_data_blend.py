"""Blending several prepared datasets: proportions, determinism, resume, DP layout, config checks."""

from __future__ import annotations

import numpy as np
import pytest

from eurotron.config import BlendSourceConfig, DataConfig
from eurotron.data.blend import BlendedDataset, BlendIndex, open_train_dataset
from eurotron.data.errors import DataError
from eurotron.data.loader import BatchLoader, TokenDataset
from eurotron.data.manifest import FORMAT, FORMAT_VERSION, write_manifest
from eurotron.data.shards import ShardWriter

EOS, VOCAB = 2, 5000


def make_source(root, marker, n_docs=200, sha="tok-a"):
    """A prepared dataset whose every token is `marker` (so a sample says where it came from)."""
    rng = np.random.default_rng(marker)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "tokenizer": {"vocab_size": VOCAB, "eos_id": EOS, "sha256": sha}, "splits": {}}
    writer = ShardWriter(root / "train", "train", VOCAB)
    for _ in range(n_docs):
        writer.add_document(np.append(np.full(int(rng.integers(5, 60)), marker), EOS))
    shards = writer.close()
    manifest["splits"]["train"] = {"docs": n_docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    write_manifest(root, manifest)
    return root


@pytest.fixture
def sources(tmp_path):
    return [make_source(tmp_path / name, marker) for name, marker in (("de", 10), ("fr", 20), ("code", 30))]


def origin(samples):
    """Which source each sample mostly comes from (its most common non-EOS token)."""
    return [int(np.bincount(row[row != EOS]).argmax()) for row in samples]


def test_blend_index_matches_weights_in_every_prefix():
    index = BlendIndex([0.5, 0.3, 0.2])
    sources, local = index.lookup(np.arange(3 * index.chunk + 17))
    for n in (1, 10, 999, index.chunk, 3 * index.chunk + 17):
        counts = np.bincount(sources[:n], minlength=3)
        assert np.all(np.abs(counts - np.array([0.5, 0.3, 0.2]) * n) <= 2), n
    for d in range(3):  # each source is read in order, without gaps or repeats
        assert local[sources == d].tolist() == list(range(int((sources == d).sum())))
    # Spread inside a chunk, not in runs: the longest run of the 20% source is short.
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([-1], (sources == 2).astype(int), [-1]))) != 0))
    assert runs.max() <= 5
    # Pointwise: any index alone gives the same answer, in any order.
    picks = np.array([5, 3 * index.chunk + 3, 17, index.chunk])
    s2, l2 = BlendIndex([5, 3, 2]).lookup(picks)
    assert s2.tolist() == sources[picks].tolist() and l2.tolist() == local[picks].tolist()
    tiny = BlendIndex([1.0, 1e-4])
    assert tiny.chunk >= 30000 and np.bincount(tiny.lookup(np.arange(2 * tiny.chunk))[0])[1] >= 4
    for bad in ([], [1.0, 0.0], [1.0, float("nan")], [-1.0]):
        with pytest.raises(DataError):
            BlendIndex(bad)


def test_blended_loader_is_deterministic_resumable_and_layout_free(sources):
    blend = BlendedDataset([(sources[0], 0.6), (sources[1], 0.3), (sources[2], 0.1)])
    loader = BatchLoader(blend, seq_len=16, global_batch_size=40, micro_batch_size=10, seed=7)
    steps = [torch_cat(loader.next_step()) for _ in range(6)]
    got = np.bincount(origin(np.concatenate(steps)), minlength=31)[[10, 20, 30]]
    assert np.allclose(got / got.sum(), [0.6, 0.3, 0.1], atol=0.04)
    # Resume from consumed_samples in a fresh loader: the same stream.
    resumed = BatchLoader(BlendedDataset([(sources[0], 0.6), (sources[1], 0.3), (sources[2], 0.1)]),
                          seq_len=16, global_batch_size=40, micro_batch_size=10, seed=7)
    resumed.load_state_dict({**loader.state_dict(), "consumed_samples": 3 * 40})
    assert all(np.array_equal(torch_cat(resumed.next_step()), steps[k]) for k in (3, 4, 5))
    # Two data-parallel ranks together read what one rank reads.
    ranks = [BatchLoader(blend, seq_len=16, global_batch_size=40, micro_batch_size=10, dp_rank=r, dp_size=2,
                         seed=7) for r in range(2)]
    assert np.array_equal(np.concatenate([torch_cat(r.next_step()) for r in ranks]), steps[0])
    other_seed = BatchLoader(blend, seq_len=16, global_batch_size=40, micro_batch_size=10, seed=8)
    assert not np.array_equal(torch_cat(other_seed.next_step()), steps[0])


def test_one_source_blend_is_the_plain_stream(sources):
    plain = BatchLoader(TokenDataset(sources[0]), seq_len=16, global_batch_size=8, micro_batch_size=4, seed=3)
    blended = BatchLoader(BlendedDataset([(sources[0], 2.0)]), seq_len=16, global_batch_size=8,
                          micro_batch_size=4, seed=3)
    for _ in range(3):
        assert np.array_equal(torch_cat(plain.next_step()), torch_cat(blended.next_step()))


def test_open_train_dataset_and_tokenizer_check(sources, tmp_path):
    cfg = DataConfig(path=str(sources[0]), blend=[BlendSourceConfig(str(sources[1]), 1.0),
                                                  BlendSourceConfig(str(sources[2]), 3.0)])
    blend = open_train_dataset(cfg)
    assert isinstance(blend, BlendedDataset) and blend.vocab_size == VOCAB and blend.eos_id == EOS
    assert blend.tokenizer_dir == sources[1] / "tokenizer" and blend.has_split("train")
    assert isinstance(open_train_dataset(DataConfig(path=str(sources[0]))), TokenDataset)
    foreign = make_source(tmp_path / "foreign", 40, sha="tok-b")
    with pytest.raises(DataError, match="another tokenizer"):
        BlendedDataset([(sources[0], 1.0), (foreign, 1.0)])
    with pytest.raises(DataError, match="another tokenizer"):
        open_train_dataset(DataConfig(path=str(foreign), blend=[BlendSourceConfig(str(sources[0]), 1.0)]))


def test_blend_config_is_validated():
    from eurotron.compose import compose_train
    from eurotron.config import ConfigError
    from eurotron.validation import validate_train_config

    cfg, _ = compose_train(["experiment=demo", "parallel=single"])
    cfg.data.blend = [BlendSourceConfig("data/de", 0.7), BlendSourceConfig("data/de", 0.3),
                      BlendSourceConfig("data/fr", 0.0)]
    with pytest.raises(ConfigError) as info:
        validate_train_config(cfg)
    assert "data.blend[1].path='data/de': appears twice" in str(info.value)
    assert "data.blend[2].weight=0.0" in str(info.value)
    cfg, _ = compose_train(["experiment=demo", "parallel=single", "data.blend=[{path: data/de, weight: 2}]"])
    assert cfg.data.blend[0].path == "data/de" and cfg.data.blend[0].weight == 2.0


def torch_cat(micro_batches):
    import torch

    return torch.cat([torch.cat([mb["input_ids"], mb["labels"][:, -1:]], dim=1) for mb in micro_batches]).numpy()


# ------------------------------------------------------------------------------------ in the trainer
@pytest.fixture(scope="module")
def prepared_pair(tmp_path_factory):
    """The demo corpus prepared by eurotron-prepare, and a second source with the same tokenizer whose
    documents are runs of one marker token (so a training sample says which source it came from)."""
    import json
    import shutil

    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    root = tmp_path_factory.mktemp("blend_train")
    demo = root / "demo"
    prepare(compose_prepare([f"output_dir={demo}", "tokenizer.vocab_size=512"]))
    manifest = json.loads((demo / "manifest.json").read_text())
    tokenizer = manifest["tokenizer"]
    marked = make_source(root / "marked", MARKER, n_docs=300, sha=tokenizer["sha256"])
    saved = json.loads((marked / "manifest.json").read_text())
    saved["tokenizer"] = tokenizer
    write_manifest(marked, saved)
    shutil.copytree(demo / "tokenizer", marked / "tokenizer")
    return demo, marked


MARKER = 7
TRAIN_SMALL = ["parallel=single", "model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2",
               "model.num_heads=4", "model.num_kv_heads=2", "model.ffn_hidden_size=176", "model.max_seq_len=64",
               "data.seq_len=32", "data.global_batch_size=8", "data.micro_batch_size=4", "scheduler.warmup_steps=1",
               "eval.every=2", "eval.batches=1", "checkpoint.every=2", "logging.plot_loss_curve=false",
               "logging.console=false"]


def _blend_trainer(demo, marked, run_dir, *extra):
    from eurotron.compose import compose_train
    from eurotron.train.trainer import Trainer
    from eurotron.validation import validate_train_config

    cfg, text = compose_train(["experiment=demo", f"data.path={demo}", f"run_dir={run_dir}", *TRAIN_SMALL,
                               f"data.blend=[{{path: '{demo}', weight: 3}}, {{path: '{marked}', weight: 1}}]",
                               *extra])
    validate_train_config(cfg, world_size=1)
    return Trainer(cfg, text)


def test_trainer_trains_on_the_blend_and_resumes_it_exactly(prepared_pair, tmp_path):
    from eurotron.train.metrics import read_metrics

    demo, marked = prepared_pair
    probe = _blend_trainer(demo, marked, tmp_path / "probe", "train.steps=4")
    assert isinstance(probe.dataset, BlendedDataset)
    rows = np.concatenate([torch_cat(probe.loader.next_step()) for _ in range(4)])
    from_marked = [bool(np.mean(row == MARKER) > 0.5) for row in rows]
    assert sum(from_marked) == len(rows) // 4  # weights 3:1: every prefix of N samples has floor(N/4) marked
    assert probe.eval_dataset is not None and probe.eval_dataset.path == demo  # eval: data.path's split

    whole = tmp_path / "whole"
    _blend_trainer(demo, marked, whole, "train.steps=4").fit()
    split = tmp_path / "split"
    _blend_trainer(demo, marked, split, "train.steps=4", "train.stop_after=2").fit()
    _blend_trainer(demo, marked, split, "train.steps=4").fit()
    losses = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in losses(whole)] == [1, 2, 3, 4]
    assert losses(split) == losses(whole)  # bitwise: the blend position is part of the checkpoint

    plain = _blend_trainer(demo, marked, tmp_path / "plain", "train.steps=4", "data.blend=[]")
    assert isinstance(plain.dataset, TokenDataset)
    plain_rows = np.concatenate([torch_cat(plain.loader.next_step()) for _ in range(4)])
    assert not any(np.mean(row == MARKER) > 0.5 for row in plain_rows)
