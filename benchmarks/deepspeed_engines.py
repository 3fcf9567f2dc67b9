"""DeepSpeed ZeRO vs FSDP2 on 2 CPU ranks, one torchrun launch (issue 16 point 6).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deepspeed_engines.py [--steps 8] [--json out.json]

The same model (24M parameters: hidden 512, 8 layers, vocab 512), batch and seed trained with the real
Trainer under each layout in turn, one torchrun launch (fresh processes) per layout, all in one run of
this script: FSDP2, ZeRO-2, ZeRO-2 with the optimizer offloaded to the CPU, ZeRO-3, ZeRO-3 with CPU
offload; FSDP2 and ZeRO-2 run twice, interleaved, so a drift of the shared machine shows. Per layout:
the median step time over the steps after the first two, and each rank's peak resident memory
(Linux's VmHWM, reset after start-up imports by writing 5 to /proc/self/clear_refs).

On CPU the "device" is host memory, so optimizer offload moves state from host memory to host memory:
the RSS figure shows what offload costs on top (its fp32 gradient partition and buffers), not the GPU
memory it frees there (plan/deepspeed_memory.py counts that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = [
    ("fsdp", ["parallel=dp2_fsdp"]),
    ("zero2", ["parallel=dp2_zero2"]),
    ("fsdp_again", ["parallel=dp2_fsdp"]),
    ("zero2_again", ["parallel=dp2_zero2"]),
    ("zero2_offload", ["parallel=dp2_zero2", "parallel.deepspeed.offload_optimizer=cpu"]),
    ("zero3", ["parallel=dp2_zero3"]),
    ("zero3_offload", ["parallel=dp2_zero3_offload"]),
]
MODEL = ["model.vocab_size=512", "model.hidden_size=512", "model.num_layers=8", "model.num_heads=8",
         "model.num_kv_heads=4", "model.ffn_hidden_size=1408", "model.max_seq_len=128"]


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec_path: str) -> None:
    import torch.distributed as dist

    from eurotron.compose import compose_train
    from eurotron.parallel.env import process_env
    from eurotron.parallel.mesh import exit_without_finalisation, shut_down_process_group
    from eurotron.train.metrics import read_metrics
    from eurotron.train.trainer import Trainer
    from eurotron.validation import validate_train_config

    spec = json.loads(Path(spec_path).read_text())
    env = process_env()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    results = {}
    for name, overrides in spec["runs"]:
        cfg, text = compose_train(overrides)
        validate_train_config(cfg, world_size=env.world_size)
        dist.barrier()
        _peak_rss_reset()
        Trainer(cfg, text, env).fit()
        rss = [None] * env.world_size
        dist.all_gather_object(rss, round(_peak_rss_mib(), 1))
        if env.rank == 0:
            times = [r["step_time_s"] for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl")][2:]
            results[name] = {"step_s_median": round(statistics.median(times), 4), "peak_rss_mib_per_rank": rss}
        dist.barrier()
    if env.rank == 0:
        Path(spec["out"]).write_text(json.dumps(results))
    shut_down_process_group()
    exit_without_finalisation(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from eurotron.compose import compose_prepare
    from eurotron.data.prepare import prepare

    work = Path(tempfile.mkdtemp(prefix="ds_bench_"))
    data = work / "data"
    prepare(compose_prepare([f"output_dir={data}", "tokenizer.vocab_size=512"]))
    base = ["experiment=demo", f"data.path={data}", "data.seq_len=128", "data.global_batch_size=8",
            "data.micro_batch_size=2", f"train.steps={args.steps}", "checkpoint.every=0", "checkpoint.save_final=false",
            "eval.every=0", "logging.log_every=1", "logging.plot_loss_curve=false", "logging.console=false",
            "train.precision=fp32", "scheduler.warmup_steps=2", *MODEL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    started = time.perf_counter()
    layouts = {}
    for name, layout in LAYOUTS:  # one launch each: a fresh process per layout, so its peak RSS is its own
        spec, out = work / f"{name}.json", work / f"{name}_out.json"
        spec.write_text(json.dumps({"runs": [(name, [*base, f"run_dir={work / name}", *layout])], "out": str(out)}))
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=2",
               __file__, "--worker", str(spec)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit((done.stdout + done.stderr)[-4000:])
        layouts.update(json.loads(out.read_text()))
    results = {"layouts": layouts, "steps": args.steps,
               "wall_s": round(time.perf_counter() - started, 1), "nproc": 2, "threads_per_rank": 1}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
