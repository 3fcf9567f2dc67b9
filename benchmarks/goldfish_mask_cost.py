"""What a Goldfish mask costs next to the training step it belongs to, at sequence length 4096.

The mask is computed by the data loader on the CPU, per micro-batch (GoldfishTransform: hash of the
labels, table lookup, AND into loss_mask). This times it for a micro-batch of 4096-token rows and
times one full training step (forward, backward, clip, AdamW) of a model on the same micro-batch,
in the same process, alternating so that machine noise hits both alike; medians are reported.
The default model is configs/model/tiny.yaml (7.1M parameters), the smallest eurotron ships: the
larger the model, the smaller the mask's share.

    python benchmarks/goldfish_mask_cost.py                          # tiny model, 1 x 4096, 2 threads
    python benchmarks/goldfish_mask_cost.py --model cpu_anchor --batch 2

Last line: mask_share=<median mask time / median step time>.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from eurotron.config import ModelConfig, OptimConfig
from eurotron.data.goldfish import GoldfishTransform, goldfish_drop_mask
from eurotron.data.loader import make_batch
from eurotron.model import build_model, count_parameters
from eurotron.model.loss import summed_cross_entropy
from eurotron.train.optim import build_optimizer

SEQ = 4096
MODELS = {
    # configs/model/tiny.yaml
    "tiny": dict(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, ffn_hidden_size=704),
    # the CPU anchor shape of benchmarks/cpu_step.py
    "cpu_anchor": dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                       ffn_hidden_size=1536),
}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch", type=int, default=1, help="4096-token rows per micro-batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shape = MODELS[args.model]
    rng = np.random.default_rng(0)

    def micro_batch(rows: int):
        tokens = rng.integers(3, shape["vocab_size"], size=(rows, SEQ + 1))
        tokens[:, rng.integers(1, SEQ, size=8)] = 2  # a few document boundaries, as in packed data
        return make_batch(tokens, eos_id=2)

    settings = {"hash k=50 h=50 (Apertus)": (50, 50, "hash"), "hash k=4 h=13 (paper)": (4, 13, "hash"),
                "static k=4": (4, 1, "static")}
    for rows in sorted({1, 8, args.batch}):
        sample = micro_batch(rows)
        for name, (k, h, strategy) in settings.items():
            transform = GoldfishTransform(k, h, strategy)
            transform(sample)  # the first call builds the table (once per process)
            full = median_time(lambda: transform(sample), 50)
            raw = median_time(lambda: goldfish_drop_mask(sample["labels"], k, h, strategy), 50)
            print(f"{rows} x {SEQ:<5d} {name:26s} transform {full * 1e3:7.3f} ms  (drop mask alone {raw * 1e3:.3f} ms)",
                  flush=True)

    batch = micro_batch(args.batch)
    cfg = ModelConfig(name=args.model, max_seq_len=SEQ, **shape)
    model = build_model(cfg, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4), torch.device("cpu"))
    gold = GoldfishTransform(50, 50)

    def step():
        mb = gold(batch)
        logits = model(mb["input_ids"], mb["position_ids"])
        loss = summed_cross_entropy(logits, mb["labels"], mb["loss_mask"]) / mb["loss_mask"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    step_times, cpu_times, masks = [], [], []
    for _ in range(args.rounds):
        cpu = time.process_time()
        step_times.append(median_time(step, 1))
        cpu_times.append(time.process_time() - cpu)
        masks.append(median_time(lambda: gold(batch), 20))
    step_s, mask_s = statistics.median(step_times), statistics.median(masks)
    print(f"model {args.model} ({count_parameters(model):,} parameters), micro-batch {args.batch} x {SEQ}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"training step {step_s:.3f} s wall, {statistics.median(cpu_times):.3f} s CPU (medians of {args.rounds}); "
          f"Apertus mask {mask_s * 1e3:.3f} ms")
    print(f"mask_share={mask_s / step_s:.6f} ({100 * mask_s / step_s:.4f}% of the step)")

if __name__ == "__main__":
    main()
