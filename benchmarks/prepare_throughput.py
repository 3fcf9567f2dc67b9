"""eurotron-prepare throughput: the whole stage per core versus the bare tokenizer, and worker scaling.

On a synthetic corpus built from the demo corpus (benchmarks/synthetic_corpus.py: real multilingual
sentences, URLs on the demo's origins so the shipped opt-out snapshot removes some, PII here and
there), with a SentencePiece tokenizer trained once by eurotron-prepare:

* **per core**: this process is pinned to one core; ``bare`` is ``SentencePieceProcessor.encode``
  of every document's text in batches of 1024 with one thread (texts already in memory);
  ``prepare`` is eurotron-prepare's tokenizing pass (reading the JSONL, parsing, domain lists,
  robots.txt + TDMRep from the snapshot, PII, dedup keys and decisions, tokenizing, shards, report;
  ``num_workers=0``), with and without the filters. Times are CPU seconds of this process
  (``time.process_time``), which the other jobs of a shared machine do not inflate; per-document
  figures are marginal — (T(N) - T(N/4)) / (3N/4) — so the fixed start-up cost (loading the
  tokenizer and the snapshot, writing the manifest) does not count per document.
* **scaling**: wall-clock documents/s for ``num_workers`` = 0 (pinned to one core), 1, 2, ...,
  with the CPU time per document of the main process (serial: reading, dedup decisions, shards,
  report) and of the workers; the main process's share bounds the speed-up workers can give.

    python benchmarks/prepare_throughput.py                      # 40k documents, workers 0 1 2
    python benchmarks/prepare_throughput.py --docs 100000 --workers 0 2 4 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import emit_results  # noqa: E402
from synthetic_corpus import write_corpus  # noqa: E402


def _prepare(corpus: Path, out: Path, tokenizer: Path, workers: int = 0, filters: bool = True):
    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    overrides = [f"source.type=jsonl", f"source.path={corpus}", f"output_dir={out}", "overwrite=true",
                 f"tokenizer.path={tokenizer}", "eval_every_nth_document=0", f"num_workers={workers}",
                 f"filters.enabled={str(filters).lower()}"]
    return prepare(compose_prepare(overrides), progress=False)


def per_core(work: Path, corpora: dict, tokenizer: Path, repeats: int) -> dict:
    import sentencepiece as spm

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    texts = {size: [json.loads(line)["text"] for line in open(path, encoding="utf-8")] for size, path in corpora.items()}
    cpu = {key: {size: [] for size in corpora} for key in ("bare", "prepare", "prepare_no_filters")}
    tokens = {}
    for _ in range(repeats):  # interleaved, so a busy spell of the machine hits all three alike
        for size, path in corpora.items():
            started = time.process_time()
            count = 0
            for at in range(0, len(texts[size]), 1024):
                count += sum(map(len, sp.encode(texts[size][at:at + 1024], out_type=int, num_threads=1)))
            cpu["bare"][size].append(time.process_time() - started)
            tokens[size] = count
            for key, filters in (("prepare", True), ("prepare_no_filters", False)):
                started = time.process_time()
                manifest = _prepare(path, work / "out", tokenizer, 0, filters)
                cpu[key][size].append(time.process_time() - started)
                if key == "prepare":
                    tokens[f"kept_{size}"] = sum(s["tokens"] for s in manifest["splits"].values())
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    small, large = sorted(corpora)
    results = {"docs": large, "tokens": tokens[large], "chars": sum(map(len, texts[large]))}
    for key, runs in cpu.items():
        marginal = (statistics.median(runs[large]) - statistics.median(runs[small])) / (large - small)
        results[key] = {"us_per_doc": round(marginal * 1e6, 1), "docs_per_s": round(1 / marginal),
                        "tokens_per_s": round(tokens[large] / large / marginal),
                        "cpu_s": [round(t, 3) for t in runs[large]]}
    for key in ("prepare", "prepare_no_filters"):
        results[key]["vs_bare"] = round(results["bare"]["us_per_doc"] / results[key]["us_per_doc"], 3)
    return results


def scaling(work: Path, corpus: Path, docs: int, tokenizer: Path, workers: list, repeats: int) -> list:
    """Wall-clock documents/s per num_workers, and where the CPU time goes: the main process (reading,
    dedup decisions, shards, report: serial) and the workers (parsing, filters, tokenizing). With
    num_workers=0 the main process is pinned to one core (one SentencePiece thread), the 1-core
    baseline. On a machine with free cores the wall-clock rate grows with the workers until the main
    process saturates, at about 1e6 / main_cpu_us_per_doc documents/s."""
    rows = []
    all_cores = os.sched_getaffinity(0)
    for n in workers:
        walls, mains, children = [], [], []
        for _ in range(repeats):
            if n == 0:
                os.sched_setaffinity(0, {min(all_cores)})
            child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            main0, wall0 = time.process_time(), time.perf_counter()
            _prepare(corpus, work / "out", tokenizer, n, True)
            walls.append(time.perf_counter() - wall0)
            mains.append(time.process_time() - main0)
            child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            children.append(child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime)
            os.sched_setaffinity(0, all_cores)
        wall = min(walls)
        main_us = statistics.median(mains) / docs * 1e6
        rows.append({"num_workers": n, "wall_s": round(wall, 2), "docs_per_s": round(docs / wall),
                     "main_cpu_us_per_doc": round(main_us, 1),
                     "workers_cpu_us_per_doc": round(statistics.median(children) / docs * 1e6, 1),
                     "main_process_ceiling_docs_per_s": round(1e6 / main_us) if n else None})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=40_000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--sentences", type=int, nargs=2, default=(3, 8), metavar=("MIN", "MAX"),
                   help="sentences per document (3-8: ~550 characters; 10-30: ~2,200)")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--skip-per-core", action="store_true", help="only the scaling runs")
    args = p.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="eurotron-prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = {}
    for size in (args.docs // 4, args.docs):
        corpora[size] = work / f"corpus_{size}.jsonl"
        write_corpus(corpora[size], size, 0, tuple(args.sentences))  # the smaller is a prefix of the larger
    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    started = time.perf_counter()
    manifest = prepare(compose_prepare([f"source.type=jsonl", f"source.path={corpora[args.docs]}",
                                        f"output_dir={work / 'tok'}", "overwrite=true",
                                        f"tokenizer.vocab_size={args.vocab}", "eval_every_nth_document=0"]),
                       progress=False)
    results = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
               "corpus": {"docs": args.docs, "sentences": args.sentences, "chars": sum(len(json.loads(l)["text"]) for l in open(corpora[args.docs]))},
               "full_prepare_with_tokenizer_training_s": round(time.perf_counter() - started, 1),
               "removed": manifest["report"]["removed"]}
    tokenizer = work / "tok" / "tokenizer"
    if not args.skip_per_core:
        results["per_core"] = per_core(work, corpora, tokenizer, args.repeats)
    results["scaling"] = scaling(work, corpora[args.docs], args.docs, tokenizer, args.workers, args.repeats)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    emit_results(results, args.json, work, keep_work=args.work_dir is not None)


if __name__ == "__main__":
    main()
