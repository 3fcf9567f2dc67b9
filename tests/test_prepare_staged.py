"""The staged prepare (data/staged/): the same dataset as one process — kept documents, removals per
reason, token sequences per split, manifest counts, report figures (`dataset_differences`) — for
several task counts, on a corpus with exact and near-duplicate chains across files, empty documents,
bad records under skip, opt-out removals and PII; dedup decisions equal `Deduplicator`'s on key
chains; a failed task is redone alone; and the whole chain on this machine's real Slurm."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
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
    (work / "dedup" / ".00001.tmp-dead0000").mkdir()  # ... and one killed while writing
    _, ran = run_local(cfg)
    assert ran == [("dedup", 1), ("resolve", 0), ("tokenizer", 0), ("tokenize", 0), ("tokenize", 1),
                   ("tokenize", 2), ("merge", 0)]
    assert dataset_differences(one, out) == []
    assert not list((work / "dedup").glob(".*tmp-*"))
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


# --------------------------------------------------------------------------------- real Slurm
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def slurm_env():
    script = REPO / "scripts" / "slurm_local.sh"
    if shutil.which("sbatch") is None:
        pytest.skip("SKIPPED THE REAL-SLURM TEST of the staged prepare: Slurm is not installed (no sbatch on PATH); "
                    "run .ci/run, or `scripts/slurm_local.sh install` then `eval \"$(scripts/slurm_local.sh start)\"`")
    if subprocess.run([str(script), "status"], capture_output=True).returncode != 0:
        pytest.skip("SKIPPED THE REAL-SLURM TEST of the staged prepare: the local Slurm is not running; "
                    "`eval \"$(scripts/slurm_local.sh start)\"` first (.ci/run does)")
    started = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=120)
    conf = re.search(r"export SLURM_CONF=(\S+)", started.stdout).group(1)
    return {**os.environ, "SLURM_CONF": conf, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _launch(args, env, cwd):
    done = subprocess.run([str(BIN / "eurotron-prepare"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr + done.stdout
    jobs = dict(re.findall(r"^  (\w+) +job (\d+)  tasks", done.stdout, re.M))
    tasks = dict(re.findall(r"^  (\w+) +job \d+  tasks (\S+)", done.stdout, re.M))
    return jobs, tasks


def _wait_gone(job_ids, env, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], env=env, capture_output=True,
                                text=True).stdout.split()
        if not queued:
            return
        time.sleep(1)
    subprocess.run(["scancel", *job_ids], env=env)
    raise AssertionError(f"jobs {job_ids} still queued after {timeout} s")


def test_staged_prepare_on_local_slurm_with_a_failed_task_rerun(corpus, slurm_env, tmp_path):
    root, src, one = corpus
    out = tmp_path / "slurm_out"
    args = [*overrides(src, out), "launch=true", "staged.tasks=3", "staged.dedup_tasks=2", "staged.mem_per_task=500M",
            "staged.time=00:10:00"]
    env = {**slurm_env, FAIL_ONCE_ENV: "filter:1"}  # filter task 1 dies on its first attempt
    jobs, tasks = _launch(args, env, tmp_path)
    assert list(jobs) == ["filter", "dedup", "resolve", "tokenizer", "tokenize", "merge"] and tasks["filter"] == "0-2"
    _wait_gone(list(jobs.values()), env)
    work = tmp_path / "slurm_out.staged"
    assert [(work / "filter" / f"{t:05d}.done").is_file() for t in range(3)] == [True, False, True]
    assert not (work / "dedup" / "00000.done").exists() and not out.exists()  # afterok: nothing ran after it
    assert "first attempt (test hook)" in (work / "logs").joinpath(
        next(p.name for p in (work / "logs").glob("filter-*_1.out"))).read_text()
    # The same command again: only filter task 1, then the later stages.
    jobs, tasks = _launch(args, env, tmp_path)
    assert tasks == {"filter": "1", "dedup": "0-1", "resolve": "0", "tokenizer": "0", "tokenize": "0-2", "merge": "0"}
    _wait_gone(list(jobs.values()), env)
    assert (work / "merge" / "00000.done").is_file(), sorted(p.name for p in (work / "logs").iterdir())
    assert dataset_differences(one, out) == []
    assert _launch(args, env, tmp_path)[0] == {}  # all done: nothing submitted


# ------------------------------------------------------------------------ rendering, validation
def test_launch_renders_chained_arrays_with_the_clusters_resources(corpus, tmp_path, monkeypatch):
    from launch_support import make_fake_sbatch, sbatch_calls

    from eurotron.data.staged.slurm import launch_staged

    root, src, _ = corpus
    env = make_fake_sbatch(tmp_path / "fake")
    cfg = compose_prepare([*overrides(src, tmp_path / "out"), "cluster=lumi", "cluster.slurm.account=project_1",
                           "cluster.container.image=/appl/x.sif", "staged.partition=small", "staged.tasks=3",
                           "staged.dedup_tasks=2", "staged.max_parallel=2", "staged.cpus_per_task=4",
                           "staged.mem_per_task=16G", "staged.time=04:00:00"])
    monkeypatch.setenv("FAKE_SLURM_DIR", env["FAKE_SLURM_DIR"])  # where the fake sbatch records its calls
    submitted = launch_staged(cfg, sbatch=str(tmp_path / "fake" / "bin" / "sbatch"), submit_dir=tmp_path)
    calls = sbatch_calls(tmp_path / "fake")
    assert [j["stage"] for j in submitted["jobs"]] == ["filter", "dedup", "resolve", "tokenizer", "tokenize", "merge"]
    assert calls[0][:3] == ["--parsable", "--kill-on-invalid-dep=yes", "--array=0-2%2"]
    assert calls[1][2:4] == ["--array=0-1%2", "--dependency=afterok:101"]
    assert calls[2][2] == "--dependency=afterok:102" and not any(a.startswith("--array") for a in calls[2])
    script = Path(calls[0][-1]).read_text()
    for line in ("#SBATCH --account=project_1", "#SBATCH --partition=small", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16G", "#SBATCH --time=04:00:00", "module load lumi-aif-singularity-bindings",
                 "singularity exec /appl/x.sif", "python -m eurotron.data.staged filter"):
        assert line in script, line
    assert "--workers 4" in script


def test_launch_validation_names_every_bad_value():
    from eurotron.config import ConfigError
    from eurotron.data.staged.slurm import array_spec, check_staged_launch

    cfg = compose_prepare(["cluster=lumi", "staged.tasks=2000", "staged.dedup_tasks=0", "staged.mem_per_task=lots",
                           "staged.time=9-00:00:00", "staged.partition=small-g", "staged.cpus_per_task=64"])
    with pytest.raises(ConfigError) as err:
        check_staged_launch(cfg)
    text = str(err.value)
    for needle in ("staged.tasks=2000: more than lumi's array size limit (cluster.slurm.max_array_size=1000)",
                   "staged.dedup_tasks=0: must be >= 1", "staged.mem_per_task='lots'", "staged.cpus_per_task=64",
                   "cluster.slurm.account=None: lumi charges jobs", "cluster.container.image=None",
                   "exceeds partition small-g's limit of 3-00:00:00"):
        assert needle in text, needle
    assert array_spec([0, 1, 2, 5, 7, 8], 0) == "0-2,5,7-8" and array_spec([3], 4) == "3%4"


def test_staged_without_filters_equals_one_process(corpus):
    root, src, _ = corpus
    base = [*overrides(src, root / "nf_one"), "filters.enabled=false", "bad_records=skip"]
    prepare(compose_prepare(base), progress=False)
    manifest, _ = run_local(compose_prepare([*overrides(src, root / "nf_many"), "filters.enabled=false",
                                             "bad_records=skip", "staged.tasks=2"]))
    assert "removed" not in manifest["documents"] and manifest["documents"]["skipped"]["malformed_json"] == 1
    assert dataset_differences(root / "nf_one", root / "nf_many") == []
