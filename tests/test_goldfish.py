"""Goldfish loss masks: bit-exactness against a literal reference, invariances, edge cases, errors,
the loader transform, the trainer's wiring, and the memorisation audit (eurotron-memorization)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from eurotron.audit.memorization import (
    AuditModel,
    audit_token_documents,
    eurotron_next_token_fn,
    lcs_length,
    load_audit_model,
    rouge_l,
    token_accuracy,
)
from eurotron.config import LossConfig
from eurotron.data.goldfish import (
    GoldfishTransform,
    build_batch_transform,
    dropped_fraction_record,
    goldfish_drop_mask,
    hash_table,
    window_products,
)
from eurotron.data.loader import BatchLoader, TokenDataset, make_batch
from eurotron.data.manifest import FORMAT, FORMAT_VERSION, write_manifest
from eurotron.data.shards import ShardWriter

PRIME = 1_000_003
SEED = 2971215073


# ------------------------------------------------------------------ reference (goldfish.md, literally)
@pytest.fixture(scope="module")
def numpy_table() -> np.ndarray:
    """The table rebuilt without torch: legacy MT19937, (uint32 & 0xFFFFFF) / 2**24 as float32."""
    raw = np.random.RandomState(SEED).randint(0, 2**32, size=PRIME, dtype=np.uint32)
    return ((raw & 0xFFFFFF).astype(np.float64) / 2**24).astype(np.float32)


@pytest.fixture(scope="module")
def table_list(numpy_table):
    return numpy_table.tolist()


def wrap_int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def reference_row(row, k, h, table, strategy="hash", start=0):
    """Slow, literal: one decision per target position of one row."""
    out = []
    for j in range(len(row)):
        if strategy == "static":
            out.append(j >= start and (j - start) % k == 0)
            continue
        if j < h - 1:
            out.append(False)
            continue
        product = 1
        for label in row[j - h + 1:j + 1]:
            product = wrap_int64(product * int(label))
        key = product % PRIME  # Python's % is non-negative for a positive modulus
        out.append(table[key] < 1 / k)
    return out


# ------------------------------------------------------------------------------------------ table
def test_table_matches_the_numpy_mt19937_rebuild(numpy_table):
    table = hash_table()
    assert table.dtype == torch.float32 and table.device.type == "cpu" and table.shape == (PRIME,)
    assert np.array_equal(table.numpy(), numpy_table)
    assert table[0].item() == pytest.approx(0.2337, abs=1e-4)
    assert hash_table() is table  # built once per process


def test_table_values_used_by_the_hand_computed_cases():
    t = hash_table()[:10].tolist()
    expected = {0: 0.233684, 2: 0.741148, 3: 0.909272, 5: 0.001125, 6: 0.217163}
    assert {i: round(t[i], 6) for i in expected} == expected


# ------------------------------------------------------------------------------ hand-computed cases
def test_hash_hand_computed():
    # h=2: windows (2,3)→6, (3,1)→3, (1,5)→5, (5,1)→5, (1,0)→0, (0,4)→0; position 0 is exempt.
    labels = torch.tensor([2, 3, 1, 5, 1, 0, 4])
    # k=4 drops table < 0.25: table[6]=0.217, table[5]=0.0011, table[0]=0.2337; table[3]=0.909 stays.
    assert goldfish_drop_mask(labels, k=4, h=2).tolist() == [False, True, False, True, True, True, True]
    # k=5 drops table < 0.2: only key 5.
    assert goldfish_drop_mask(labels, k=5, h=2).tolist() == [False, False, False, True, True, False, False]
    # h=1: key = label mod 1,000,003 (negative ids give the non-negative remainder).
    assert goldfish_drop_mask(torch.tensor([PRIME + 5, PRIME + 2, 5, 2]), k=2, h=1).tolist() == [True, False, True, False]
    assert goldfish_drop_mask(torch.tensor([-1]), k=1, h=1).tolist() == [True]


def test_hash_products_wrap_around_in_int64(table_list):
    # 2**62 * 4 = 2**64 wraps to 0 → key 0; 2**62 * 2 = 2**63 wraps to -2**63 → a non-negative key.
    assert window_products(torch.tensor([[2**62, 4]]), 2).tolist() == [[0]]
    assert window_products(torch.tensor([[2**62, 2]]), 2).tolist() == [[-(2**63)]]
    key = (-(2**63)) % PRIME
    for k in (2, 4, 50):
        got = goldfish_drop_mask(torch.tensor([2**62, 2]), k=k, h=2).tolist()
        assert got == [False, table_list[key] < 1 / k]
        assert goldfish_drop_mask(torch.tensor([2**62, 4]), k=k, h=2).tolist() == [False, table_list[0] < 1 / k]


def test_static_hand_computed():
    labels = torch.arange(10)
    positions = lambda mask: torch.nonzero(mask).flatten().tolist()  # noqa: E731
    assert positions(goldfish_drop_mask(labels, k=3, h=50, strategy="static")) == [0, 3, 6, 9]
    assert positions(goldfish_drop_mask(labels, k=3, h=50, strategy="static", start=2)) == [2, 5, 8]
    assert positions(goldfish_drop_mask(labels, k=1, h=1, strategy="static", start=4)) == [4, 5, 6, 7, 8, 9]
    assert positions(goldfish_drop_mask(labels, k=2, h=1, strategy="static", start=10)) == []
    # Every row of a batch alike (static depends on the offset only).
    batch = goldfish_drop_mask(torch.randint(0, 100, (3, 10)), k=4, h=1, strategy="static", start=1)
    assert all(positions(row) == [1, 5, 9] for row in batch)


@pytest.mark.parametrize("strategy", ["hash", "static"])
def test_matches_the_literal_reference_on_random_rows(table_list, strategy):
    rng = random.Random(0)
    for _ in range(150):
        length, h = rng.randint(0, 60), rng.randint(1, 64)
        k, start = rng.choice([1, 2, 3, 4, 5, 8, 32, 50, 128]), rng.randint(0, 8)
        high = rng.choice([3, 1000, 2**17, 2**31, 2**62])
        rows = [[rng.randint(-high if high > 2**20 else 0, high) for _ in range(length)] for _ in range(2)]
        got = goldfish_drop_mask(torch.tensor(rows, dtype=torch.int64).reshape(2, length), k, h, strategy, start)
        assert got.dtype == torch.bool and got.shape == (2, length)
        for row, mask in zip(rows, got.tolist()):
            assert mask == reference_row(row, k, h, table_list, strategy, start), (length, h, k, high)
        single = goldfish_drop_mask(torch.tensor(rows[0], dtype=torch.int64), k, h, strategy, start)
        assert single.shape == (length,) and single.tolist() == got[0].tolist()


def test_apertus_rate_on_realistic_labels():
    labels = torch.randint(3, 32000, (16, 4096), generator=torch.Generator().manual_seed(0))
    frac = goldfish_drop_mask(labels, k=50, h=50).float().mean().item()
    # About 1/k, a little less: windows with >= 64 factors of two collapse to key 0 (never dropped at k=50).
    assert 0.01 < frac < 0.025
    frac4 = goldfish_drop_mask(labels, k=4, h=13).float().mean().item()
    assert 0.2 < frac4 < 0.3


def test_other_integer_dtypes_give_the_same_mask():
    labels = torch.randint(0, 120, (2, 40), generator=torch.Generator().manual_seed(1))
    want = goldfish_drop_mask(labels, 3, 5)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(goldfish_drop_mask(labels.to(dtype), 3, 5), want)
    assert torch.equal(goldfish_drop_mask(labels.numpy(), 3, 5), want)


# -------------------------------------------------------------------------------------- invariance
def test_same_window_same_decision_at_any_offset_and_row():
    g = torch.Generator().manual_seed(2)
    h, k = 13, 4
    text = torch.randint(3, 5000, (200,), generator=g)
    base = goldfish_drop_mask(text, k, h)
    rows = []
    for offset in (1, 7, 64, 300):
        filler = torch.randint(3, 5000, (offset,), generator=g)
        shifted = torch.cat([filler, text])
        mask = goldfish_drop_mask(shifted, k, h)
        # Every window that lies inside `text` is decided as in `base`.
        assert torch.equal(mask[offset + h - 1:], base[h - 1:])
        rows.append(shifted[-200 - 1:])  # equal-length rows, `text` at offset 1 of each
    batch = goldfish_drop_mask(torch.stack(rows), k, h)
    for row in batch:
        assert torch.equal(row[1 + h - 1:], base[h - 1:])


def test_same_document_same_mask_in_different_packs():
    """A document packed after different neighbours (loader rows with EOS separators) is masked alike
    wherever its windows lie inside it; positions after EOS stay excluded."""
    g = torch.Generator().manual_seed(3)
    eos, h, k = 2, 6, 3
    doc = torch.randint(3, 900, (80,), generator=g)
    transform = GoldfishTransform(k, h)
    masks = []
    for before in (5, 23, 41):
        neighbour = torch.randint(3, 900, (before,), generator=g)
        tokens = torch.cat([neighbour, torch.tensor([eos]), doc, torch.tensor([eos]), doc[:10]])
        batch = transform(make_batch(tokens[None, :].numpy(), eos))
        # Label j is tokens[j+1]: doc token i is label (before + i); windows inside the doc start at i=0.
        first = before + h - 1
        masks.append(batch["loss_mask"][0, first:before + len(doc)])
        assert not batch["loss_mask"][0, before].item()  # input EOS → its target is never counted
    assert all(torch.equal(masks[0], m) for m in masks[1:])


def test_label_zero_forces_key_zero():
    g = torch.Generator().manual_seed(4)
    h = 5
    labels = torch.randint(3, 1000, (300,), generator=g)
    labels[::37] = 0
    windows_with_zero = torch.zeros(300, dtype=torch.bool)
    for j in range(h - 1, 300):
        windows_with_zero[j] = bool((labels[j - h + 1:j + 1] == 0).any())
    assert windows_with_zero.sum() > 20
    # table[0] = 0.2337: such positions are never dropped for k >= 5 and always for k <= 4.
    for k in (5, 8, 50):
        assert not goldfish_drop_mask(labels, k, h)[windows_with_zero].any()
    for k in (1, 2, 4):
        assert goldfish_drop_mask(labels, k, h)[windows_with_zero].all()


def test_label_one_does_not_change_the_product():
    g = torch.Generator().manual_seed(5)
    h, k = 13, 2
    for t in torch.randint(2, 10**6, (50,), generator=g).tolist():
        ones_then_t = torch.tensor([1] * (h - 1) + [t])
        assert goldfish_drop_mask(ones_then_t, k, h)[-1] == goldfish_drop_mask(torch.tensor([t]), k, 1)[0]
    # Interleaving ids 1 (t0 1 t1 1 …) and doubling h hashes the same products: the window of 8
    # ending at t_i (or at the 1 after it) holds t_{i-3} … t_i, as the window of 4 ending at t_i does.
    text = torch.randint(2, 5000, (40,), generator=g)
    with_ones = torch.stack([text, torch.ones_like(text)], dim=1).flatten()
    a = goldfish_drop_mask(text, 3, 4)
    b = goldfish_drop_mask(with_ones, 3, 8)
    assert torch.equal(b[8::2], a[4:]) and torch.equal(b[7::2], a[3:])
    assert a[3:].any() and not a[3:].all()


# ------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("h", [1, 2, 13, 50])
def test_first_h_minus_one_positions_are_kept_and_k1_drops_the_rest(h):
    labels = torch.randint(0, 50000, (3, 64), generator=torch.Generator().manual_seed(h))
    expected = torch.tensor([False] * (h - 1) + [True] * (64 - h + 1)).expand(3, 64)
    assert torch.equal(goldfish_drop_mask(labels, 1, h), expected)
    assert not goldfish_drop_mask(labels, 2, h)[:, : h - 1].any()


def test_h_longer_than_the_row_and_empty_rows():
    labels = torch.randint(3, 100, (2, 10))
    assert not goldfish_drop_mask(labels, 1, 11).any()
    assert not goldfish_drop_mask(labels, 1, 1000).any()
    exact = goldfish_drop_mask(labels, 1, 10)  # one window: only the last position can go
    assert exact[:, -1].all() and not exact[:, :-1].any()
    assert goldfish_drop_mask(torch.zeros(0, dtype=torch.long), 4, 13).shape == (0,)
    assert goldfish_drop_mask(torch.zeros(3, 0, dtype=torch.long), 4, 13).shape == (3, 0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"k": 0}, ValueError, "k=0: must be >= 1"),
        ({"k": -3}, ValueError, "k=-3"),
        ({"h": 0}, ValueError, "h=0: must be >= 1"),
        ({"k": 2.5}, TypeError, "k=2.5: must be an integer"),
        ({"k": True}, TypeError, "k=True"),
        ({"h": "13"}, TypeError, "h='13'"),
        ({"start": -1, "strategy": "static"}, ValueError, "start=-1"),
        ({"strategy": "random"}, ValueError, "strategy='random': must be one of hash, static"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"k": 4, "h": 13, **kwargs}
    with pytest.raises(error, match=match):
        goldfish_drop_mask(torch.arange(20), **args)


@pytest.mark.parametrize("labels, match", [
    (torch.rand(2, 8), "integer tensor of token ids, got dtype torch.float32"),
    (torch.ones(8, dtype=torch.bool), "dtype torch.bool"),
    (torch.arange(8).double(), "torch.float64"),
])
def test_non_integer_labels(labels, match):
    with pytest.raises(TypeError, match=match):
        goldfish_drop_mask(labels, 4, 13)


@pytest.mark.parametrize("shape", [(), (2, 3, 4)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"shape \[L\] or \[B, L\]"):
        goldfish_drop_mask(torch.zeros(shape, dtype=torch.long), 4, 13)


# --------------------------------------------------------------------------------------- transform
def test_transform_narrows_loss_mask_without_touching_the_batch():
    rng = np.random.default_rng(6)
    tokens = rng.integers(3, 700, size=(4, 129))
    tokens[:, 30] = 2  # an EOS: its target is excluded already
    batch = make_batch(tokens, eos_id=2)
    original = {k: v.clone() for k, v in batch.items()}
    transform = GoldfishTransform(k=4, h=13)
    out = transform(batch)
    drop = goldfish_drop_mask(batch["labels"], 4, 13)
    assert out is not batch and out["loss_mask"] is not batch["loss_mask"]
    assert torch.equal(out["loss_mask"], original["loss_mask"] & ~drop)
    assert not out["loss_mask"][:, 30].any()
    for key in ("input_ids", "labels", "position_ids"):
        assert out[key] is batch[key]
    for key, value in original.items():
        assert torch.equal(batch[key], value), f"{key} was modified in place"
    dropped, eligible = transform.pop_counts()
    assert eligible == int(original["loss_mask"].sum())
    assert dropped == int(original["loss_mask"].sum() - out["loss_mask"].sum()) > 0
    assert transform.pop_counts() == (0, 0)


def test_build_batch_transform_from_config():
    from eurotron.compose import compose_train

    assert build_batch_transform(LossConfig(name="standard")) is None
    cfg, _ = compose_train(["data.path=unused", "loss=goldfish"])
    transform = build_batch_transform(cfg.loss)
    assert (transform.k, transform.h, transform.strategy) == (50, 50, "hash")  # Apertus defaults
    cfg, _ = compose_train(["data.path=unused", "loss=goldfish", "loss.k=4", "loss.h=13", "loss.strategy=static"])
    assert repr(build_batch_transform(cfg.loss)) == "GoldfishTransform(k=4, h=13, strategy='static', start=0)"
    assert dropped_fraction_record(None) == {}


def test_config_validation_of_goldfish_settings():
    from eurotron.compose import compose_train
    from eurotron.config import ConfigError
    from eurotron.validation import validate_train_config

    cfg, _ = compose_train(["data.path=unused", "loss=goldfish", "data.seq_len=32", "loss.h=33", "loss.k=0"])
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    assert "loss.h=33: exceeds data.seq_len=32" in str(err.value) and "loss.k=0: must be >= 2" in str(err.value)
    cfg, _ = compose_train(["data.path=unused", "loss=goldfish", "data.seq_len=32", "loss.h=32"])
    validate_train_config(cfg)


# ------------------------------------------------------------------------------------------ loader
def _random_dataset(root: Path, n_docs=60, vocab=5000, eos=2) -> TokenDataset:
    rng = np.random.default_rng(7)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "tokenizer": {"vocab_size": vocab, "eos_id": eos}, "splits": {}}
    writer = ShardWriter(root / "train", "train", vocab, shard_tokens=2000)
    for _ in range(n_docs):
        writer.add_document(np.append(rng.integers(3, vocab, size=int(rng.integers(5, 120))), eos))
    shards = writer.close()
    manifest["splits"]["train"] = {"docs": n_docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    write_manifest(root, manifest)
    return TokenDataset(root, "train")


def test_loader_applies_goldfish_and_resumes_exactly(tmp_path):
    dataset = _random_dataset(tmp_path)
    plain = BatchLoader(dataset, 64, 8, 2, seed=11)
    gold = BatchLoader(dataset, 64, 8, 2, seed=11, batch_transform=GoldfishTransform(4, 13))
    steps = []
    for _ in range(6):
        a, b = plain.next_step(), gold.next_step()
        for x, y in zip(a, b):
            for key in ("input_ids", "labels", "position_ids"):
                assert torch.equal(x[key], y[key])
            assert torch.equal(y["loss_mask"], x["loss_mask"] & ~goldfish_drop_mask(x["labels"], 4, 13))
            assert (x["loss_mask"] & ~y["loss_mask"]).any() or not x["loss_mask"].any()
        steps.append(b)
    # Resume after 3 steps: the same batches, masks included.
    first = BatchLoader(dataset, 64, 8, 2, seed=11, batch_transform=GoldfishTransform(4, 13))
    for _ in range(3):
        first.next_step()
    resumed = BatchLoader(dataset, 64, 8, 2, seed=11, batch_transform=GoldfishTransform(4, 13))
    resumed.load_state_dict(first.state_dict())
    for want in steps[3:]:
        for x, y in zip(want, resumed.next_step()):
            assert all(torch.equal(x[key], y[key]) for key in x)


# ------------------------------------------------------------------- trainer wiring and the audit
SMALL_MODEL = [
    "model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
    "model.num_kv_heads=2", "model.ffn_hidden_size=176", "model.max_seq_len=128",
]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    out = tmp_path_factory.mktemp("gf_data") / "demo"
    prepare(compose_prepare([f"output_dir={out}", "tokenizer.vocab_size=512"]), progress=False)
    return out


def _train(demo_data: Path, run_dir: Path, *extra: str):
    from eurotron.compose import compose_train
    from eurotron.train.metrics import read_metrics
    from eurotron.train.trainer import Trainer
    from eurotron.validation import validate_train_config

    cfg, yaml_text = compose_train([
        "experiment=demo", "parallel=single", f"data.path={demo_data}", f"run_dir={run_dir}", "data.seq_len=64",
        "data.global_batch_size=4", "data.micro_batch_size=2", "train.steps=4", "scheduler.warmup_steps=1",
        "checkpoint.every=0", "eval.every=0", "logging.plot_loss_curve=false", "logging.console=false",
        *SMALL_MODEL, *extra,
    ])
    validate_train_config(cfg, world_size=1)
    Trainer(cfg, yaml_text).fit()
    return read_metrics(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def goldfish_run(demo_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gf_run")
    records = _train(demo_data, run_dir, "loss=goldfish", "loss.k=4", "loss.h=13")
    return run_dir, records


def test_trainer_logs_the_dropped_fraction(demo_data, goldfish_run, tmp_path):
    _, records = goldfish_run
    standard = _train(demo_data, tmp_path / "std", "loss=standard")
    assert "goldfish_dropped_frac" not in standard[0]
    for gold, std in zip(records, standard):
        frac = gold["goldfish_dropped_frac"]
        assert 0.1 < frac < 0.4  # ≈ 1/k = 0.25
        # The same samples: the kept count shrinks by exactly the logged fraction.
        assert gold["kept_tokens"] == pytest.approx(std["kept_tokens"] * (1 - frac), abs=0.5)


def _oracle_model(documents, tokenizer, wrong_at=None):
    """Logits for the true next token of the document the row starts like (its first 5 tokens),
    except at context length `wrong_at`, where token 63 (in no document) comes out."""
    vocab = 64

    def fn(ids, valid):
        out = torch.zeros(ids.shape[0], vocab)
        for row in range(ids.shape[0]):
            seq = ids[row][valid[row]].tolist()
            doc = next(d for d in documents if d[:len(seq[:5])] == seq[:5])
            out[row, 63 if len(seq) == wrong_at else doc[len(seq)]] = 1.0
        return out

    return AuditModel(fn, tokenizer, max_len=1000, kind="test", source="oracle")


class _FakeTokenizer:
    bos_id, eos_id, pad_id = 1, 2, 0
    vocab_size = 64  # as wide as the oracle's logits

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_audit_metrics_with_oracle_and_wrong_models():
    rng = np.random.default_rng(8)
    docs = [rng.integers(3, 60, size=n).tolist() for n in (30, 45, 12, 60)]
    report = audit_token_documents(_oracle_model(docs, _FakeTokenizer()), docs, suffix_tokens=10, batch_size=3)
    a = report.aggregate
    assert (a["documents"], a["skipped"], a["exact_matches"]) == (4, 0, 4)
    assert a["token_accuracy"] == a["rouge_l"] == a["exact_match_rate"] == 1.0
    # One wrong token in the middle of document 0's suffix (greedy continues from the wrong one).
    report = audit_token_documents(_oracle_model(docs[:1], _FakeTokenizer(), wrong_at=25), docs[:1], suffix_tokens=10)
    r = report.results[0]
    assert not r.exact_match and r.prompt_tokens == 20
    assert r.token_accuracy == pytest.approx(0.9) and r.rouge_l == pytest.approx(0.9)
    # Too short documents are skipped and reported.
    report = audit_token_documents(_oracle_model(docs, _FakeTokenizer()), docs, suffix_tokens=12, min_prompt_tokens=1)
    assert [s["index"] for s in report.skipped] == [2]


def test_rouge_l_and_token_accuracy_by_hand():
    assert lcs_length([1, 2, 3, 4], [1, 3, 4, 5]) == 3
    assert lcs_length([], [1]) == 0
    assert rouge_l([1, 2, 3, 4], [1, 3, 4, 5]) == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    assert rouge_l([1, 2], [1, 2, 3, 4])["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge_l([7], [1, 2])["f1"] == 0.0
    assert token_accuracy([1, 9, 3], [1, 2, 3, 4]) == 0.5
    assert token_accuracy([2, 3, 4], [1, 2, 3]) == 0.0  # positional, not a subsequence


def test_left_padding_does_not_change_the_logits(goldfish_run):
    from eurotron.generation import load_model_from_checkpoint

    model, cfg, _ = load_model_from_checkpoint(goldfish_run[0])
    fn = eurotron_next_token_fn(model, cfg.model.document_masking)
    prompt = torch.randint(3, 500, (1, 20), generator=torch.Generator().manual_seed(9))
    alone = fn(prompt, torch.ones_like(prompt, dtype=torch.bool))
    padded = torch.cat([torch.full((1, 7), 3), prompt], dim=1)
    valid = torch.cat([torch.zeros(1, 7, dtype=torch.bool), torch.ones(1, 20, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(fn(padded, valid), alone, atol=1e-4, rtol=1e-4)


def test_memorization_cli(goldfish_run, bin_dir, tmp_path):
    from eurotron.paths import DEMO_CORPUS

    docs = tmp_path / "docs.jsonl"
    lines = DEMO_CORPUS.read_text(encoding="utf-8").splitlines()[:3]
    docs.write_text("\n".join(lines) + '\n{"text": "short"}\n', encoding="utf-8")
    out = tmp_path / "audit"
    cmd = [str(bin_dir / "eurotron-memorization"), str(goldfish_run[0]), "--documents", str(docs),
           "--suffix-tokens", "8", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "exact match" in done.stdout
    report = json.loads((out / "memorization.json").read_text())
    assert report["kind"] == "eurotron" and report["suffix_tokens"] == 8
    assert len(report["per_document"]) == 3 and report["skipped"][0]["index"] == 3
    assert set(report["aggregate"]) >= {"exact_match_rate", "token_accuracy", "rouge_l", "documents"}
    for doc in report["per_document"]:
        assert doc["id"].startswith("http") and 0.0 <= doc["rouge_l"] <= 1.0 and doc["suffix_tokens"] == 8
    assert "| # | id |" in (out / "memorization.md").read_text()
    bad = subprocess.run([*cmd[:2], "--documents", str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.jsonl does not exist" in bad.stderr


def test_audit_of_a_hugging_face_directory(goldfish_run, tmp_path):
    """The checkpoint converted by eurotron-convert to-hf (fp32) audits like the checkpoint itself:
    same next-token logits, left padding masked by the attention mask, same report."""
    from eurotron.convert.to_hf import convert_to_hf

    hf_dir = tmp_path / "hf"
    convert_to_hf(goldfish_run[0], hf_dir, dtype="fp32", progress=False)
    hf = load_audit_model(hf_dir)
    ours = load_audit_model(goldfish_run[0])
    assert (hf.kind, ours.kind) == ("hf", "eurotron") and hf.max_len == ours.max_len == 128
    prompt = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(1))
    alone = ours.next_token_logits(prompt, torch.ones_like(prompt, dtype=torch.bool))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), prompt], dim=1)
    valid = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(hf.next_token_logits(prompt, torch.ones_like(prompt, dtype=torch.bool)), alone,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf.next_token_logits(padded, valid), alone, atol=1e-4, rtol=1e-4)
    docs = [list(range(10, 40)), list(range(50, 70))]
    a = audit_token_documents(hf, docs, suffix_tokens=5, batch_size=2)
    b = audit_token_documents(ours, docs, suffix_tokens=5, batch_size=1)
    assert [(r.prompt_tokens, r.suffix_tokens) for r in a.results] == [(25, 5), (15, 5)]
    assert [r.generated for r in a.results] == [r.generated for r in b.results]


# ------------------------------------------------------------------------ parallel layouts (gloo)
PARALLEL_MODEL = ["model.vocab_size=512", "model.hidden_size=64", "model.num_layers=4", "model.num_heads=8",
                  "model.num_kv_heads=4", "model.ffn_hidden_size=176", "model.max_seq_len=64"]


def _parallel_overrides(data: Path, run_dir: Path, *layout: str):
    return ["experiment=demo", "parallel=single", f"data.path={data}", f"run_dir={run_dir}", "data.seq_len=64",
            "data.global_batch_size=8", "data.micro_batch_size=1", "train.steps=5", "scheduler.warmup_steps=1",
            "optim.lr=3e-3", "checkpoint.every=0", "eval.every=0", "logging.plot_loss_curve=false",
            "logging.console=false", "loss=goldfish", "loss.k=4", "loss.h=13", *PARALLEL_MODEL, *layout]


def test_goldfish_under_tp2_pp2_and_tp2_dp2_matches_one_process(demo_data, tmp_path):
    """One torchrun launch of 4 gloo processes trains TP2 x PP2 (sequence parallel, 1F1B) and TP2 x DP2
    with Goldfish; both reproduce the single-process Goldfish run step by step (loss, gradient norm,
    kept tokens, dropped fraction summed over data-parallel ranks)."""
    import os
    import sys

    from eurotron.compose import compose_train
    from eurotron.train.metrics import read_metrics
    from eurotron.train.trainer import Trainer
    from eurotron.validation import validate_train_config

    worker = Path(__file__).resolve().parent / "dist_worker.py"
    reference = tmp_path / "single"
    cfg, text = compose_train(_parallel_overrides(demo_data, reference))
    validate_train_config(cfg, world_size=1)
    Trainer(cfg, text).fit()
    layouts = {"tp2_pp2": ["parallel=tp2_pp2"], "tp2_dp2": ["parallel=tp2_dp2"]}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"runs": [{"name": name, "overrides": _parallel_overrides(demo_data, tmp_path / name, *o)}
                                         for name, o in layouts.items()]}))
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=4", str(worker), str(spec)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]

    want = read_metrics(reference / "metrics.jsonl")
    assert len(want) == 5 and all(0.1 < r["goldfish_dropped_frac"] < 0.4 for r in want)
    for name in layouts:
        got = read_metrics(tmp_path / name / "metrics.jsonl")
        assert [r["step"] for r in got] == [1, 2, 3, 4, 5], name
        for g, w in zip(got, want):
            assert g["kept_tokens"] == w["kept_tokens"], name
            assert g["goldfish_dropped_frac"] == pytest.approx(w["goldfish_dropped_frac"], rel=1e-12), name
            assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), (name, g["step"])
            assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-3), (name, g["step"])
