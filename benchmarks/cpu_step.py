"""eurotron's training step vs. a plain loop over transformers' LlamaForCausalLM, same shape, same process.

Shape (the project's CPU anchor): vocab 32000, hidden 512, 8 layers, 8 heads / 4 KV heads, FFN 1536,
batch 4 x 512, AdamW, fp32, 2 threads. The two steps alternate round by round so that machine
noise hits both alike; the median over rounds is reported. Last line:
    tokens_per_s eurotron=<a> hf=<b> ratio=<a/b>

    python benchmarks/cpu_step.py                 # defaults: 2 threads, 6 rounds of 2 steps each
    python benchmarks/cpu_step.py --no-compile    # eurotron without torch.compile
    python benchmarks/cpu_step.py --cpu-matmul aten   # eurotron on PyTorch's default (MKL) GEMMs
    python benchmarks/cpu_step.py --hf-onednn     # transformers' linears on eurotron's oneDNN GEMMs too
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eurotron.config import ModelConfig, OptimConfig
from eurotron.model import build_model
from eurotron.model.linear import linear, set_cpu_matmul
from eurotron.model.loss import summed_cross_entropy
from eurotron.train.optim import build_optimizer

SHAPE = dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, ffn_hidden_size=1536)
BATCH, SEQ = 4, 512


def finish_step(loss, model, optimizer):
    """What both loops do after the forward pass: backward, clip to 1.0, AdamW step, drop the grads."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def eurotron_step_fn(compile_model: bool):
    cfg = ModelConfig(name="bench", max_seq_len=SEQ, document_masking=False, **SHAPE)
    model = build_model(cfg, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4, weight_decay=0.1), torch.device("cpu"))
    forward = torch.compile(model) if compile_model else model

    def step(input_ids, labels, loss_mask):
        logits = forward(input_ids)
        return finish_step(summed_cross_entropy(logits, labels, loss_mask) / loss_mask.sum(), model, optimizer)

    return step


def hf_step_fn(onednn_linears: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["hidden_size"], num_hidden_layers=SHAPE["num_layers"],
        num_attention_heads=SHAPE["num_heads"], num_key_value_heads=SHAPE["num_kv_heads"],
        intermediate_size=SHAPE["ffn_hidden_size"], max_position_embeddings=SEQ, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.train()
    if onednn_linears:  # kernel-neutral comparison: what is left of the gain without the GEMM kernels
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.forward = lambda x, m=module: linear(x, m.weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(input_ids, labels, loss_mask):
        return finish_step(model(input_ids=input_ids, labels=labels).loss, model, optimizer)

    return step


def timed(step, batch, n_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(n_steps):
        step(*batch)
    return BATCH * SEQ * n_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cpu-matmul", choices=("onednn", "aten"), default="onednn",
                        help="kernels for eurotron's fp32 CPU linears (cluster.cpu_matmul)")
    parser.add_argument("--hf-onednn", action="store_true", help="give transformers' linears oneDNN GEMMs too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_cpu_matmul(args.cpu_matmul)

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ + 1), generator=g)
    ours_batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), torch.ones(BATCH, SEQ, dtype=torch.bool))
    # transformers shifts labels itself: labels are the inputs.
    hf_batch = (tokens[:, :-1].contiguous(), tokens[:, :-1].contiguous(), None)

    ours, hf = eurotron_step_fn(not args.no_compile), hf_step_fn(args.hf_onednn)
    for _ in range(args.warmup):
        ours(*ours_batch)
        hf(*hf_batch)
    rates = {"eurotron": [], "hf": []}
    for r in range(args.rounds):
        rates["eurotron"].append(timed(ours, ours_batch, args.steps_per_round))
        rates["hf"].append(timed(hf, hf_batch, args.steps_per_round))
        print(f"round {r}: eurotron {rates['eurotron'][-1]:.1f} tok/s, hf {rates['hf'][-1]:.1f} tok/s", flush=True)
    a, b = statistics.median(rates["eurotron"]), statistics.median(rates["hf"])
    print(f"threads={args.threads} compile={not args.no_compile} cpu_matmul={args.cpu_matmul} "
          f"hf_onednn={args.hf_onednn} torch={torch.__version__}")
    print(f"tokens_per_s eurotron={a:.1f} hf={b:.1f} ratio={a / b:.3f}")


if __name__ == "__main__":
    main()
