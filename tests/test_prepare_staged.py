"""The staged prepare (data/staged/): the same dataset as one process — kept documents, removals per
reason, token sequences per split, manifest counts, report figures (`dataset_differences`) — for
several task counts, on a corpus with exact and near-duplicate chains across files, empty documents,
bad records under skip, opt-out removals and PII; dedup decisions equal `Deduplicator`'s on key
chains; a failed task is redone alone; and the whole chain on this machine's real Slurm."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from eurotron.compose import compose_prepare
from eurotron.data.filters.dedup import DedupKeys
from eurotron.data.filters.dedup_index import Deduplicator, KeyIndex
from eurotron.data.loader import TokenDataset
from eurotron.data.prepare import prepare
from eurotron.data.staged import run_local
from eurotron.data.staged.compare import dataset_differences
from eurotron.data.staged.dedup import CODES, run_partition, run_resolve, removed_file
from eurotron.data.staged.keys import key_rows, write_buckets
from eurotron.data.staged.runner import FAIL_ONCE_ENV
from eurotron.paths import DEMO_CORPUS

FILES = 7


def _chain(rng, start, steps, words):
    """A text and `steps` successors, each a few words away from the one before (a near-dup chain)."""
    text = [rng.choice(words) for _ in range(300)]
    out = [" ".join(text)]
    for _ in range(steps):
        for _ in range(3):
            text[rng.randrange(len(text))] = rng.choice(words)
        out.append(" ".join(text))
    return out


def make_corpus(root: Path) -> Path:
    """The demo corpus (opt-out removals, PII, its own duplicates) cut into files, with near-dup chains
    and exact duplicates spread over the files, empty documents and bad records."""
    rng = random.Random(7)
    words = [f"w{i}" for i in range(3000)]
    lines = DEMO_CORPUS.read_text().splitlines()
    extra = []
    for c in range(4):
        chain = _chain(rng, c, 6, words)
        chain.insert(3, chain[1].upper() + " !")  # an exact duplicate of a (removed) near duplicate
        extra += [json.dumps({"text": t, "url": f"https://chain.example.eu/{c}/{i}", "lang": "xx"}) for i, t in enumerate(chain)]
    extra += [json.dumps({"text": "", "url": "https://e.example.eu/"}), json.dumps({"text": "  \n"}),
              '{"text": "broken', json.dumps({"body": "no text field"}), json.dumps(lines[0] and json.loads(lines[0]))]
    rng.shuffle(extra)
    allrows = lines + extra
    src = root / "src"
    src.mkdir()
    per = -(-len(allrows) // FILES)
    # Uneven files, so slices by bytes differ from slices by count.
    for i in range(FILES):
        part = allrows[i * per:(i + 1) * per]
        (src / f"part{i}.jsonl").write_text("\n".join(part) + "\n")
    return src


def overrides(src, out, *more):
    return ["source.type=jsonl", f"source.path={src}", f"output_dir={out}", "tokenizer.vocab_size=600",
            "eval_every_nth_document=7", "shard_tokens=20000", *more]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    src = make_corpus(root)
    one = root / "one"
    prepare(compose_prepare(overrides(src, one)), progress=False)
    return root, src, one


@pytest.mark.parametrize("tasks,dedup_tasks", [(1, 1), (3, 2), (FILES + 3, 3)])
def test_staged_equals_one_process(corpus, tasks, dedup_tasks):
    root, src, one = corpus
    out = root / f"many_{tasks}"
    manifest, ran = run_local(compose_prepare(overrides(src, out, f"staged.tasks={tasks}",
                                                        f"staged.dedup_tasks={dedup_tasks}")))
    assert len(ran) == 2 * tasks + dedup_tasks + 3
    assert dataset_differences(one, out) == []
    removed = manifest["report"]["removed"]
    assert removed["dedup_near"] >= 15 and removed["dedup_exact"] >= 4 and removed["robots"] >= 31
    skipped = manifest["documents"]["skipped"]
    assert skipped["empty"] == 2 and skipped["malformed_json"] == 1 and skipped["missing_text"] == 1
    report = json.loads((out / "report.json").read_text())
    assert report["pii"]["replaced"]["email"] == 11
    if tasks > 1:  # one set of shards per tokenize task with documents
        assert len(manifest["splits"]["train"]["shards"]) >= min(tasks, FILES)
    # The loader reads the merged dataset; the sampler's view equals the one-process one.
    assert TokenDataset(out, "eval").num_tokens == TokenDataset(one, "eval").num_tokens


def test_a_failed_task_is_redone_alone(corpus, monkeypatch):
    root, src, one = corpus
    out = root / "rerun"
    cfg = compose_prepare(overrides(src, out, "staged.tasks=3", "staged.dedup_tasks=2"))
    monkeypatch.setenv(FAIL_ONCE_ENV, "dedup:1")
    with pytest.raises(RuntimeError, match="dedup:1"):
        run_local(cfg)
    work = root / "rerun.staged"
    assert (work / "dedup" / "00000.done").is_file() and not (work / "dedup" / "00001.done").exists()
    (work / "dedup" / "00001").mkdir()  # what a task killed after its rename, before its marker, leaves
    (work / "dedup" / "00001" / "postings.npy").write_bytes(b"partial")
    _, ran = run_local(cfg)
    assert ran == [("dedup", 1), ("resolve", 0), ("tokenizer", 0), ("tokenize", 0), ("tokenize", 1),
                   ("tokenize", 2), ("merge", 0)]
    assert dataset_differences(one, out) == []
    # Done is done: nothing runs again; another config for the same work dir is refused.
    assert run_local(cfg)[1] == []
    with pytest.raises(Exception, match="different config"):
        run_local(compose_prepare(overrides(src, out, "staged.tasks=2")))


def _keys(rng, n, bands):
    """Keys with many collisions: exact keys from a small range, band keys that chain documents."""
    exact = rng.integers(1, n // 3, n).astype(np.uint64)
    band = rng.integers(1, n, (n, bands)).astype(np.uint64) + np.uint64(1 << 40)
    has = rng.random(n) > 0.1
    band[~has] = 0
    return DedupKeys(exact, band, has)


@pytest.mark.parametrize("native", [True, False])
def test_dedup_tasks_decide_as_the_deduplicator(tmp_path, native):
    rng = np.random.default_rng(3)
    batches = [_keys(rng, n, 4) for n in (500, 0, 300, 700)]
    for exact, near in ((True, True), (False, True), (True, False)):
        dedup = Deduplicator(exact, near)
        if not native:
            dedup.native, dedup.exact_index, dedup.band_index = False, KeyIndex(), KeyIndex()
        expected = [v for keys in batches for v in dedup.decide(keys)]
        for buckets in (1, 3):
            work = tmp_path / f"{exact}{near}{buckets}{native}"
            dirs, first = [], 0
            for t, keys in enumerate(batches):
                d = work / f"f{t}"
                d.mkdir(parents=True)
                write_buckets(d, key_rows(keys, 0, exact, near), buckets)
                dirs.append(d)
            firsts = np.cumsum([0] + [len(k.exact) for k in batches[:-1]]).tolist()
            parts = []
            for j in range(buckets):
                (work / f"p{j}").mkdir()
                run_partition(dirs, firsts, j, work / f"p{j}")
                parts.append(work / f"p{j}")
            (work / "r").mkdir()
            run_resolve(parts, [len(k.exact) for k in batches], exact, near, work / "r")
            got = []
            for t, keys in enumerate(batches):
                codes = np.zeros(len(keys.exact), np.uint8)
                removed = np.load(work / "r" / removed_file(t))
                codes[removed["candidate"].astype(np.int64)] = removed["code"]
                got += [CODES[c] for c in codes.tolist()]
            assert got == expected, (exact, near, buckets)
        # Documents whose bands collide only with removed ones stay: "any earlier holder" would differ
        # (exact keys are transitive, so exact-only decisions are the same either way).
        assert (_naive(batches, exact, near) != expected) == near


def _naive(batches, exact, near):
    seen_exact, seen_band, out = set(), set(), []
    for keys in batches:
        for e, bands, has in zip(keys.exact.tolist(), keys.bands.tolist(), keys.has_bands.tolist()):
            if exact and e in seen_exact:
                out.append("dedup_exact")
            elif near and has and not seen_band.isdisjoint(bands):
                out.append("dedup_near")
            else:
                out.append(None)
            seen_exact.add(e)
            if has:
                seen_band.update(bands)
    return out
