"""How long a checkpoint blocks the training loop: synchronous vs. asynchronous saves, side by side.

A ~300M-parameter eurotron model (vocab 32000, hidden 1024, 20 layers, 16 heads / 8 KV heads, FFN 2816,
untied: 301M parameters) with its AdamW state (3.6 GB of fp32 model + optimizer state to write) trains
on CPU; every ``--steps-between`` steps it saves through the trainer's CheckpointManager, first with
``async_save=False``, then with ``async_save=True``, into the same file system. Both modes write the
same files (DCP shards, RNG, checksums.json) with the same fsyncs. "Blocked" is the wall time the loop
spends inside ``save()`` (which, when asynchronous, includes waiting for the previous save still in
flight); the wait for the last save before exit is reported separately. Last line:
    blocked_s sync=<median> async=<median> ratio=<async/sync>

    python benchmarks/checkpoint_async.py                       # 3 saves per mode, 4 steps between
    python benchmarks/checkpoint_async.py --saves 2 --dir /scratch/me/bench
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from eurotron.config import ModelConfig, OptimConfig
from eurotron.model import build_model, count_parameters
from eurotron.train.checkpoint import CheckpointManager
from eurotron.model.loss import summed_cross_entropy
from eurotron.train.optim import build_optimizer

SHAPE = dict(vocab_size=32000, hidden_size=1024, num_layers=20, num_heads=16, num_kv_heads=8, ffn_hidden_size=2816)
BATCH, SEQ = 1, 128


def build():
    cfg = ModelConfig(name="bench300m", max_seq_len=SEQ, document_masking=False, **SHAPE)
    model = build_model(cfg, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4), torch.device("cpu"))
    return model, optimizer


def train_step(model, optimizer, generator) -> None:
    ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ + 1), generator=generator)
    mask = torch.ones(BATCH, SEQ)
    loss = summed_cross_entropy(model(ids[:, :-1]), ids[:, 1:], mask) / mask.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_mode(async_save: bool, model, optimizer, root: Path, saves: int, steps_between: int) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    manager = CheckpointManager(root, keep_last=1, async_save=async_save)
    generator = torch.Generator().manual_seed(0)
    blocked, step_times, step = [], [], 0
    for _ in range(saves):
        for _ in range(steps_between):
            started = time.perf_counter()
            train_step(model, optimizer, generator)
            step_times.append(time.perf_counter() - started)
            step += 1
        started = time.perf_counter()
        manager.save(step, model, optimizer, {"tokens_seen": step * BATCH * SEQ}, "bench: true\n")
        blocked.append(time.perf_counter() - started)
    started = time.perf_counter()
    manager.wait()
    final_wait = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (root / (root / "latest").read_text().strip()).rglob("*") if p.is_file())
    shutil.rmtree(root, ignore_errors=True)
    return {"blocked": blocked, "final_wait": final_wait, "step_median": statistics.median(step_times), "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--steps-between", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, optimizer = build()
    print(f"model: {count_parameters(model) / 1e6:.0f}M parameters, torch {torch.__version__}, "
          f"{args.threads} threads", flush=True)
    train_step(model, optimizer, torch.Generator().manual_seed(1))  # AdamW state exists from here on
    base = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir))
    results = {}
    try:
        for name, flag in (("sync", False), ("async", True)):
            results[name] = r = run_mode(flag, model, optimizer, base / name, args.saves, args.steps_between)
            print(f"{name:>5}: checkpoint {r['bytes'] / 1e9:.2f} GB; blocked per save "
                  f"{', '.join(f'{b:.2f}' for b in r['blocked'])} s (median {statistics.median(r['blocked']):.2f}); "
                  f"final wait {r['final_wait']:.2f} s; median step {r['step_median']:.2f} s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sync, asyn = (statistics.median(results[k]["blocked"]) for k in ("sync", "async"))
    print(f"blocked_s sync={sync:.2f} async={asyn:.2f} ratio={asyn / sync:.3f}")


if __name__ == "__main__":
    main()
