"""eurotron-prepare over a million synthetic documents: wall time and peak memory (RSS).

Writes a synthetic corpus (benchmarks/synthetic_corpus.py; 1M documents of 3-8 sentences, about
560 MB of JSONL) and runs the real command on it — ``python -m eurotron.cli.prepare`` with the
default filters (demo opt-out snapshot, PII, exact + near dedup), a SentencePiece tokenizer trained
on the first ``--training-chars`` characters, and ``num_workers`` worker processes — while a poller
reads the resident set size of the command and of each of its worker processes from /proc every
half second. Memory stays flat as the corpus streams through: what grows with the corpus is only the
dedup index (1 + bands keys per kept document: hash tables of 11-23 bytes per key with the C
extension, sorted runs of 8 bytes per key without) and the report's domain counts.

    python benchmarks/prepare_1m.py                         # 1,000,000 documents, 2 workers
    python benchmarks/prepare_1m.py --docs 2000000 --workers 8 --work-dir /scratch/bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import emit_results  # noqa: E402
from synthetic_corpus import write_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


class Poller(threading.Thread):
    """Peak RSS of a process and of its descendants, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_main = self.peak_worker = self.peak_total = 0
        self.timeline = []  # (seconds, main KiB, total KiB)
        self.stop = threading.Event()
        self.started = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            main = _rss_kib(self.pid)
            todo, workers = _children(self.pid), []
            while todo:
                child = todo.pop()
                workers.append(_rss_kib(child))
                todo += _children(child)
            total = main + sum(workers)
            self.peak_main = max(self.peak_main, main)
            self.peak_worker = max([self.peak_worker] + workers)
            self.peak_total = max(self.peak_total, total)
            self.timeline.append((round(time.perf_counter() - self.started, 1), main, total))
            self.stop.wait(self.interval)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--training-chars", type=int, default=20_000_000)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="eurotron-prepare-1m-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    started = time.perf_counter()
    stats = write_corpus(corpus, args.docs)
    corpus_s = time.perf_counter() - started
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "eurotron.cli.prepare", "source.type=jsonl", f"source.path={corpus}",
               f"output_dir={work / 'out'}", "overwrite=true", f"num_workers={args.workers}",
               f"tokenizer.vocab_size={args.vocab}", f"tokenizer.max_training_chars={args.training_chars}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = Poller(process.pid)
    poller.start()
    out, err = process.communicate()
    wall = time.perf_counter() - started
    poller.stop.set()
    poller.join()
    if process.returncode != 0:
        sys.exit(f"eurotron-prepare failed ({process.returncode}):\n{err[-3000:]}")
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    report = json.loads((work / "out" / "report.json").read_text())
    step = max(1, len(poller.timeline) // 10)
    results = {
        "docs": args.docs, "corpus_bytes": corpus.stat().st_size, "corpus_chars": stats["chars"],
        "corpus_write_s": round(corpus_s, 1), "num_workers": args.workers, "wall_s": round(wall, 1),
        "docs_per_s": round(args.docs / wall), "timing": manifest["timing"],
        "kept": manifest["documents"]["kept"], "removed": manifest["report"]["removed"],
        "tokens_out": report["tokens"]["out"],
        "peak_rss_mib": {"main": round(poller.peak_main / 1024), "largest_worker": round(poller.peak_worker / 1024),
                         "main_plus_workers": round(poller.peak_total / 1024)},
        "rss_timeline_mib": [(t, round(m / 1024), round(tot / 1024)) for t, m, tot in poller.timeline[::step]],
        "load_average_at_end": os.getloadavg(),
        "summary": out.strip().splitlines(),
    }
    emit_results(results, args.json, work, keep_work=args.work_dir is not None)


if __name__ == "__main__":
    main()
