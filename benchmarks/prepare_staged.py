"""Staged eurotron-prepare (data/staged/): documents/s per node on this machine, and the node-hours to
filter and tokenize 1T tokens on EuroHPC systems extrapolated from it.

A synthetic corpus (benchmarks/synthetic_corpus.py) in `--files` JSONL files is prepared by the staged
pipeline's real task entry point (`python -m eurotron.data.staged <stage> <work_dir> --task t`), every
array stage's tasks run as separate processes, `--cores` at a time (this node's cores), the stages one
after the other, exactly what Slurm array tasks on one node would do. The tokenizer is given
(trained once beforehand, as `tokenizer.path`), since training runs once per corpus on a fixed sample
(tokenizer.max_training_chars) whatever its size. The same corpus is prepared by one process
(`prepare`, num_workers=0) for comparison and checked to give the same dataset.

Reported: wall seconds per stage, documents/s and tokens/s per node for the whole pipeline (filter +
dedup + tokenize + merge) on this node, CPU seconds per token summed over all tasks (each task's own
`time.process_time`, which other jobs on a shared machine inflate less than wall time),
and the extrapolation: node-hours = 1e12 tokens x CPU s/token / (cores per node x 3600), under the
assumptions printed with it.

    python benchmarks/prepare_staged.py --docs 40000 --files 8 --tasks 4 --cores 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import emit_results  # noqa: E402
from synthetic_corpus import write_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Two EuroHPC systems: cores per node from configs/cluster (the GPU nodes' usable cores), and the
# CPU partitions' nodes of the same systems (LUMI-C: 2x64-core EPYC 7763; MareNostrum 5 GPP: 2x56-core
# Xeon 8480+), from the centres' user guides.
SYSTEMS = {"lumi": 128, "marenostrum5": 112}


def _cluster_cores(name: str) -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.load(REPO / "configs" / "cluster" / f"{name}.yaml").cpus_per_node)


def _run_tasks(work: Path, stage: str, count: int, cores: int) -> float:
    def one(task: int) -> None:
        done = subprocess.run([sys.executable, "-m", "eurotron.data.staged", stage, str(work), "--task", str(task),
                               "--workers", "0"], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{stage} task {task} failed:\n{done.stderr}")
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=40000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--dedup-tasks", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()

    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare
    from eurotron.data.staged import STAGES, init_work_dir
    from eurotron.data.staged.compare import dataset_differences
    from eurotron.data.staged.runner import task_count
    from eurotron.data.staged.workdir import WorkDir

    root = Path(tempfile.mkdtemp(prefix="prep_staged_"))
    src = root / "src"
    src.mkdir()
    chars = 0
    for f in range(args.files):
        chars += write_corpus(src / f"part{f:03d}.jsonl", args.docs // args.files, seed=f)["chars"]
    base = ["source.type=jsonl", f"source.path={src}", "eval_every_nth_document=0"]
    tok = root / "tok"
    prepare(compose_prepare([*base, f"output_dir={tok}", "tokenizer.max_training_chars=5000000"]), progress=False)
    given = [*base, f"tokenizer.path={tok / 'tokenizer'}"]

    started, cpu = time.perf_counter(), time.process_time()
    one = prepare(compose_prepare([*given, f"output_dir={root / 'one'}"]), progress=False)
    one_s, one_cpu = time.perf_counter() - started, time.process_time() - cpu

    cfg = compose_prepare([*given, f"output_dir={root / 'many'}", f"staged.tasks={args.tasks}",
                           f"staged.dedup_tasks={args.dedup_tasks}"])
    work = init_work_dir(cfg)
    plan = WorkDir(work.root).plan()
    wall = {stage: round(_run_tasks(work.root, stage, task_count(stage, plan), args.cores), 2) for stage in STAGES}
    differences = dataset_differences(root / "one", root / "many")
    task_s = {stage: sum(work.info(stage, t)["cpu_seconds"] for t in range(task_count(stage, plan))) for stage in STAGES}
    docs, tokens = one["documents"]["read"], sum(s["tokens"] for s in one["splits"].values())
    report = json.loads((root / "one" / "report.json").read_text())
    tokens_in = report["tokens"]["in"]  # every document is tokenized, removed ones too (for the report)
    pipeline_s = sum(v for k, v in wall.items() if k != "tokenizer")
    cpu_per_token = sum(v for k, v in task_s.items() if k != "tokenizer") / tokens_in
    extrapolation = {}
    for name, cpu_cores in SYSTEMS.items():
        for label, cores in ((f"{name} GPU node ({_cluster_cores(name)} cores, configs/cluster)", _cluster_cores(name)),
                             (f"{name} CPU node ({cpu_cores} cores)", cpu_cores)):
            extrapolation[label] = round(1e12 * cpu_per_token / (cores * 3600), 1)
    results = {
        "docs": docs, "chars": chars, "tokens_in": tokens_in, "tokens_kept": tokens,
        "tokens_per_doc": round(tokens_in / docs, 1), "tasks": args.tasks, "dedup_tasks": args.dedup_tasks,
        "cores": args.cores, "load_average_at_start": os.getloadavg(),
        "one_process_s": round(one_s, 2), "one_process_docs_per_s": round(docs / one_s, 1),
        "one_process_cpu_us_per_token": round(one_cpu / tokens_in * 1e6, 4),
        "stage_wall_s": wall, "task_cpu_seconds": {k: round(v, 2) for k, v in task_s.items()},
        "staged_docs_per_s_per_node": round(docs / pipeline_s, 1),
        "staged_tokens_per_s_per_node": round(tokens_in / pipeline_s, 1),
        "task_cpu_us_per_token": round(cpu_per_token * 1e6, 4),
        "node_hours_for_1T_tokens": extrapolation,
        "same_dataset_as_one_process": differences == [],
    }
    if differences:
        results["differences"] = differences
    emit_results(results, args.json, root, args.keep)


if __name__ == "__main__":
    main()
