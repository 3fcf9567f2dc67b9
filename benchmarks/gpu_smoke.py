"""GPU smoke test and MFU of eurotron's training step on one GPU (issue 13, point 7); ~10 minutes on an H100/H200.

Sections (each guarded: a failure is printed and recorded, and the next section runs):
  kernels   which attention kernels ran (torch.profiler kernel names): causal SDPA and document-masked flex
  flex      flex forward + backward against the dense reference (max abs diff of logits and gradients), bf16 and fp32
  dtypes    mixed-precision dtypes of weights, activations, gradients and AdamW state under train.precision=bf16
  mfu       an 8B-shaped model (Llama-3-8B widths, few layers) at seq 8192: causal eager, document-masked
            flex, compiled, compiled + selective_op recompute: step time, tokens/s, MFU; peak memory next to
            the estimate of src/eurotron/plan/memory.py

Configs are composed from the real config tree with overrides (model.attention, parallel.compile,
parallel.activation_checkpoint ...), so a feature that is not there yet fails its own section only.
Output: a JSON file (--out) and a Markdown table on stdout, with date, GPU, torch version and command.

    python benchmarks/gpu_smoke.py                       # full run (~10 min on one H100/H200)
    python benchmarks/gpu_smoke.py --quick               # ~1 min: 2 layers, seq 4096, fewer steps
    python benchmarks/gpu_smoke.py --cpu-check           # tiny model, seq 256, on CPU: GPU-only parts skipped
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from eurotron.compose import compose_train
from eurotron.data.loader import make_batch
from eurotron.model import model_flops_per_token
from eurotron.parallel.mesh import build_mesh
from eurotron.parallel.parallelize import parallelize
from eurotron.plan.memory import GiB, estimate_memory
from eurotron.model.loss import summed_cross_entropy
from eurotron.train.mfu import detect_peak_flops
from eurotron.train.optim import build_optimizer
from eurotron.validation import validate_train_config

EOS = 1
ATTENTION_KERNEL = re.compile(r"flash|fmha|cudnn|attention|attn|flex|sdpa|efficient|triton_tem", re.I)
DOC_MASKED = ["model.document_masking=true"]
CAUSAL = ["model.document_masking=false"]
# name -> overrides; the GPU variants of the MFU section (issue 13's list).
MFU_VARIANTS = {
    "causal eager (sdpa)": [*CAUSAL, "model.attention=sdpa"],
    "document-masked flex": [*DOC_MASKED, "model.attention=flex"],
    "document-masked flex, compiled": [*DOC_MASKED, "model.attention=flex", "parallel.compile=true"],
    "document-masked flex, compiled + selective_op": [*DOC_MASKED, "model.attention=flex", "parallel.compile=true",
                                                      "parallel.activation_checkpoint=selective_op"],
}
# --cpu-check: what runs on a CPU in seconds (no compile, the CPU attention path).
CPU_VARIANTS = {"causal eager": CAUSAL, "document-masked (CPU path)": DOC_MASKED}


class Skipped(Exception):
    """A section that cannot run here (no GPU); reported as skipped, not failed."""


# ------------------------------------------------------------------------------------------ building
def compose(args, *overrides: str, layers: Optional[int] = None, seq: Optional[int] = None):
    seq = seq or args.seq
    shape = ["model=tiny"] if args.cpu_check else ["model=llama3_8b"]
    cfg, _ = compose_train([
        *shape, f"model.num_layers={layers or args.layers}", f"model.max_seq_len={max(seq, 256)}",
        "data=custom", "data.path=/unused", f"data.seq_len={seq}", "data.micro_batch_size=1",
        "data.global_batch_size=1", "parallel=single", "train.precision=bf16", "run_dir=/tmp/unused",
        f"cluster.device={'cpu' if args.cpu_check else 'cuda'}", *overrides])
    validate_train_config(cfg, world_size=1)
    return cfg


def build(cfg, device):
    model = parallelize(cfg, build_mesh(cfg.parallel, device), device, seed=0)
    optimizer = build_optimizer(model.parts[0], cfg.optim, device)
    return model, optimizer


def packed_tokens(cfg, seed: int) -> np.ndarray:
    """One packed row [1, L+1] of random tokens; with document masking, documents of 1/32 to 1/2 of the row."""
    rng = np.random.default_rng(seed)
    length = cfg.data.seq_len + 1
    tokens = rng.integers(2, cfg.model.vocab_size, size=(1, length), dtype=np.int64)
    if cfg.model.document_masking:
        at = 0
        while True:
            at += int(rng.integers(length // 32 + 1, length // 2 + 1))
            if at >= length:
                break
            tokens[0, at] = EOS
    return tokens


def micro_batches(cfg, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    return [make_batch(packed_tokens(cfg, seed), EOS)]


def train_step(model, optimizer, batches, device, loss_fn: Callable = summed_cross_entropy) -> None:
    kept = sum(mb["loss_mask"].sum() for mb in batches).to(device, torch.float64)
    model.forward_backward(batches, 1.0 / kept.clamp(min=1.0), loss_fn)
    model.clip_gradients(1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def need_gpu(device) -> None:
    if device.type != "cuda":
        raise Skipped("no GPU")


# ------------------------------------------------------------------------------------------ sections
def section_kernels(args, device) -> Dict[str, Any]:
    """Attention kernel names seen by the profiler in one training step of each attention path."""
    need_gpu(device)
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, overrides in (("causal sdpa", [*CAUSAL, "model.attention=sdpa"]),
                            ("document-masked flex", [*DOC_MASKED, "model.attention=flex"])):
        try:
            cfg = compose(args, *overrides, layers=1, seq=min(args.seq, 4096))
            model, optimizer = build(cfg, device)
            batches = micro_batches(cfg)
            train_step(model, optimizer, batches, device)  # warm-up (flex compiles its kernels here)
            sync(device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                train_step(model, optimizer, batches, device)
                sync(device)
            kernels = {}
            for evt in prof.key_averages():
                if "CUDA" not in str(getattr(evt, "device_type", "")):
                    continue
                t = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
                kernels[evt.key] = kernels.get(evt.key, 0) + t
            attention = sorted((k for k in kernels if ATTENTION_KERNEL.search(k)), key=lambda k: -kernels[k])
            top = sorted(kernels.items(), key=lambda kv: -kv[1])[:8]
            out[name] = {"attention_kernels": attention[:12], "top_kernels_us": {k[:120]: round(v, 1) for k, v in top}}
        except Exception as err:  # one path failing must not hide the other
            out[name] = {"status": "failed", "error": _short(err)}
        finally:
            _free(device)
    return out


def section_flex(args, device) -> Dict[str, Any]:
    """Logits and gradients of the flex path against the dense reference, same weights and batch."""
    need_gpu(device)
    out = {}
    for precision in ("fp32", "bf16"):
        runs = {}
        for attention in ("flex", "sdpa"):  # sdpa with document masking: the dense-mask reference path
            cfg = compose(args, *DOC_MASKED, f"model.attention={attention}", f"train.precision={precision}",
                          layers=2, seq=min(args.seq, 2048))
            model, _ = build(cfg, device)
            captured = {}

            def loss_fn(logits, labels, mask, captured=captured):
                captured["logits"] = logits.detach().float()
                return summed_cross_entropy(logits, labels, mask)

            batches = micro_batches(cfg, seed=1)
            kept = batches[0]["loss_mask"].sum().to(device, torch.float64)
            model.forward_backward(batches, 1.0 / kept, loss_fn)
            grads = {n: p.grad.detach().float().clone()
                     for n, p in model.parts[0].named_parameters() if p.grad is not None}
            runs[attention] = (captured["logits"], grads)
            del model
            _free(device)
        (lf, gf), (ld, gd) = runs["flex"], runs["sdpa"]
        grad_diff = max((gf[n] - gd[n]).abs().max().item() for n in gd)
        out[precision] = {"logits_max_abs_diff": (lf - ld).abs().max().item(),
                          "logits_max_abs": ld.abs().max().item(),
                          "grad_max_abs_diff": grad_diff,
                          "grad_max_abs": max(g.abs().max().item() for g in gd.values()),
                          "grads_compared": len(gd)}
    return out


def section_dtypes(args, device) -> Dict[str, Any]:
    """What each tensor is stored and computed in under train.precision=bf16 (one process: autocast)."""
    cfg = compose(args, *CAUSAL, layers=2, seq=min(args.seq, 1024))
    model, optimizer = build(cfg, device)
    part = model.parts[0]
    seen: Dict[str, str] = {}
    block = next(iter(part.layers.values()))

    def record(key):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            seen.setdefault(key, str(output.dtype))
        return hook

    hooks = [block.attention.register_forward_hook(record("attention_output")),
             block.feed_forward.w1.register_forward_hook(record("linear_output")),
             block.register_forward_hook(record("block_output"))]

    def loss_fn(logits, labels, mask):
        seen["logits"] = str(logits.dtype)
        return summed_cross_entropy(logits, labels, mask)

    batches = micro_batches(cfg)
    kept = batches[0]["loss_mask"].sum().to(device, torch.float64)
    model.forward_backward(batches, 1.0 / kept, loss_fn)
    for h in hooks:
        h.remove()
    params = list(part.parameters())
    out = {"compute_dtype": str(model.dtype),
           "weights": sorted({str(p.dtype) for p in params}),
           "gradients": sorted({str(p.grad.dtype) for p in params if p.grad is not None}),
           "activations": seen}
    optimizer.step()
    out["optimizer_state"] = sorted({f"{k}:{v.dtype}" for s in optimizer.state.values() for k, v in s.items()
                                     if torch.is_tensor(v) and v.dim() > 0})
    return out


def measure(args, device, overrides: List[str]) -> Dict[str, Any]:
    """Median step time of one variant, tokens/s, MFU (model FLOPs / device peak), peak memory vs. estimate."""
    cfg = compose(args, *overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, optimizer = build(cfg, device)
    times = []
    for i in range(args.warmup + args.steps):
        batches = micro_batches(cfg, seed=i)
        sync(device)
        started = time.perf_counter()
        train_step(model, optimizer, batches, device)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    step = statistics.median(times)
    tokens_per_s = cfg.data.seq_len * cfg.data.micro_batch_size / step
    peak = detect_peak_flops(device)
    flops = model_flops_per_token(cfg.model, cfg.data.seq_len)
    estimate = estimate_memory(cfg).peak_bytes / GiB
    return {"overrides": overrides, "step_time_s": step, "tokens_per_s": tokens_per_s,
            "mfu": flops * tokens_per_s / peak if peak else None, "peak_flops": peak,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None,
            "estimate_gib": estimate, "layers": cfg.model.num_layers, "seq_len": cfg.data.seq_len}


def section_mfu(args, device) -> Dict[str, Any]:
    variants = CPU_VARIANTS if args.cpu_check else MFU_VARIANTS
    out = {}
    for name, overrides in variants.items():
        try:
            out[name] = measure(args, device, overrides)
        except Exception as err:  # a variant whose feature is missing or broken: the others still run
            out[name] = {"overrides": overrides, "status": "failed", "error": _short(err)}
            traceback.print_exc()
        finally:
            _free(device)
    out["ratios"] = goal_ratios(out)
    if args.cpu_check:
        for name in MFU_VARIANTS:
            out.setdefault(name, {"status": "skipped", "error": "no GPU"})
    return out


def goal_ratios(rows: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The issue's goals as speed ratios: document-masked / causal (goal >= 0.95), compiled / eager (>= 1.1)."""
    def speed_of(x: str, relative_to: str) -> Optional[float]:
        a, b = rows.get(x, {}), rows.get(relative_to, {})
        return b["step_time_s"] / a["step_time_s"] if "step_time_s" in a and "step_time_s" in b else None

    causal, document, compiled = list(MFU_VARIANTS)[:3]
    return {"document_vs_causal": speed_of(document, causal), "compiled_vs_eager": speed_of(compiled, document)}


# ------------------------------------------------------------------------------------------ report
def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) < 600 else text[:600] + " ..."


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_section(name: str, fn, args, device) -> Dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **fn(args, device)}
    except Skipped as why:
        result = {"status": "skipped", "error": str(why)}
    except Exception as err:
        traceback.print_exc()
        result = {"status": "failed", "error": _short(err)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"[{name}] {result['status']}" + (f": {result['error']}" if result["status"] != "ok" else ""), flush=True)
    return result


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: Dict[str, Any]) -> str:
    lines = [f"GPU smoke, {report['date']}, {report['device']}, torch {report['torch']}",
             f"command: `{report['command']}`", ""]
    mfu = report["sections"].get("mfu", {})
    lines += ["| variant | step s | tokens/s | MFU | peak GiB | estimate GiB |", "|---|---|---|---|---|---|"]
    for name, row in mfu.items():
        if isinstance(row, dict) and "step_time_s" in row:
            lines.append(f"| {name} | {row['step_time_s']:.3f} | {row['tokens_per_s']:.0f} | "
                         f"{_fmt(row['mfu'], '.1%')} | "
                         f"{_fmt(row['peak_memory_gib'], '.1f')} | {row['estimate_gib']:.1f} |")
        elif isinstance(row, dict) and "error" in row:
            lines.append(f"| {name} | {row.get('status', 'failed')}: {row['error'][:100]} | | | | |")
    ratios = mfu.get("ratios", {})
    lines += ["", "speed ratios (goals: document/causal >= 0.95, compiled/eager >= 1.1): "
              + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in ratios.items()), ""]
    for name, section in report["sections"].items():
        if name != "mfu":
            body = {k: v for k, v in section.items() if k not in ("status", "seconds")}
            lines.append(f"- **{name}** ({section['status']}): {json.dumps(body, default=str)[:1500]}")
    return "\n".join(lines)


SECTIONS = {"kernels": section_kernels, "flex": section_flex, "dtypes": section_dtypes, "mfu": section_mfu}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute: 2 layers, seq 4096, 1+2 steps")
    parser.add_argument("--cpu-check", action="store_true", help="tiny model at seq 256 on CPU (GPU sections skipped)")
    parser.add_argument("--layers", type=int, default=None, help="layers of the 8B-shaped model (default 4)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 8192)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per variant (default 6)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default 3; compile)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--out", default="gpu_smoke.json", help="JSON result file")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    small = args.quick or args.cpu_check
    args.layers = args.layers or (1 if args.cpu_check else 2 if args.quick else 4)
    args.seq = args.seq or (256 if args.cpu_check else 4096 if args.quick else 8192)
    args.steps = args.steps or (1 if args.cpu_check else 2 if args.quick else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    if args.cpu_check:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        print("no GPU visible: use --cpu-check for the CPU variant", file=sys.stderr)
        return 2
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (--cpu-check)",
              "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "args": vars(args), "sections": {}}
    for name in args.only.split(","):
        report["sections"][name] = run_section(name, SECTIONS[name], args, device)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown(report))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
