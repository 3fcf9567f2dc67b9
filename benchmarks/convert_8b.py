"""eurotron-convert to-hf on an 8B-shaped checkpoint: time and peak RSS, streaming vs. load-everything.

The checkpoint has Llama-3-8B's shapes (vocab 128256, hidden 4096, FFN 14336, 32/8 heads) with random
fp32 weights, written as a single-process DCP checkpoint (model tensors only: the converter reads only
the model's byte ranges, so optimizer state in a real checkpoint costs disk, not time or memory). To
fit disk and time, it has fewer layers than 32 (``--layers``, default 2 and 4: two sizes show that peak
RSS does not grow with the model). The 32-layer time is extrapolated from the largest size by bytes
(conversion streams bytes, so time is proportional to the checkpoint size); peak RSS needs no
extrapolation for the streaming converter (it is set by the largest tensor, the embedding, whatever the
depth), while the naive approach holds the whole model, so its peak scales with the size.

Each step runs in a fresh subprocess; a conversion reports its peak RSS as the kernel's high-water mark
of resident memory of that process (``VmHWM`` in /proc/self/status; ``ru_maxrss`` is not used because
on Linux it also counts the parent's memory at fork time):

* **streaming**: ``eurotron.convert.convert_to_hf`` (one tensor at a time, header-first safetensors);
* **naive**: what a load-everything script does: build the full fp32 model, ``dcp.load`` the whole
  state dict, convert every tensor to the output dtype, and write shards with
  ``huggingface_hub.save_torch_state_dict``.

    python benchmarks/convert_8b.py                       # layers 2 and 4, bf16, both approaches
    python benchmarks/convert_8b.py --layers 4 --dtype fp32 --skip-naive
    python benchmarks/convert_8b.py --work-dir /scratch/bench --keep

The machine is shared and its disk is a network volume: times are indicative, RSS is exact.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import torch
from omegaconf import OmegaConf

GB = 1e9
FULL_LAYERS = 32


def model_config(layers: int):
    from eurotron.config import ModelConfig

    base = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "model" / "llama3_8b.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), base))
    return replace(cfg, num_layers=layers, name=f"llama3_8b_{layers}layers")


def make_checkpoint(step_dir: Path, layers: int) -> Dict[str, float]:
    """A random-weight 8B-shaped DCP checkpoint, written tensor by tensor (bounded memory)."""
    from eurotron.convert.dcp_writer import write_model_checkpoint
    from eurotron.convert.families import tensor_specs

    cfg = model_config(layers)
    specs = {s.ours: (tuple(s.shape), torch.float32) for s in tensor_specs(cfg)}
    generator = torch.Generator().manual_seed(0)

    def produce(name: str) -> torch.Tensor:
        shape, _ = specs[name]
        return torch.empty(shape).normal_(0.0, 0.02, generator=generator)

    step_dir.mkdir(parents=True)
    started = time.perf_counter()
    write_model_checkpoint(step_dir / "model_optim", specs, produce)
    (step_dir / "config.yaml").write_text(OmegaConf.to_yaml({"name": cfg.name, "model": OmegaConf.structured(cfg)}))
    (step_dir / "trainer.json").write_text(json.dumps({"step": 1, "tokens_seen": 0}))
    largest = max(torch.Size(shape).numel() * 4 for shape, _ in specs.values())
    total = sum(torch.Size(shape).numel() * 4 for shape, _ in specs.values())
    return {"write_s": time.perf_counter() - started, "largest_bytes": largest, "checkpoint_bytes": total}


# ------------------------------------------------------------------------------- measured children
def run_streaming(ckpt: Path, out: Path, dtype: str) -> None:
    from eurotron.convert import convert_to_hf

    convert_to_hf(ckpt, out, dtype=dtype, progress=False)


def run_naive(ckpt: Path, out: Path, dtype: str) -> None:
    import torch.distributed.checkpoint as dcp
    from huggingface_hub import save_torch_state_dict

    from eurotron.convert.families import tensor_specs
    from eurotron.convert.dtypes import DTYPES
    from eurotron.convert.to_hf import load_run_config
    from eurotron.model import build_model

    cfg, _ = load_run_config(ckpt)
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    state = model.state_dict()
    dcp.load({"model": state}, checkpoint_id=str(ckpt / "model_optim"))
    hf_state = {s.hf: state[s.ours].to(DTYPES[dtype]) for s in tensor_specs(cfg) if not s.tied}
    out.mkdir(parents=True)
    save_torch_state_dict(hf_state, out, max_shard_size="5GB")


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory (VmHWM, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(mode: str, ckpt: Path, out: Path, arg: str) -> None:
    started = time.perf_counter()
    if mode == "make":
        result = make_checkpoint(ckpt, int(arg))
    else:
        {"streaming": run_streaming, "naive": run_naive}[mode](ckpt, out, arg)
        result = {"mode": mode, "seconds": time.perf_counter() - started}
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result), flush=True)


def in_subprocess(mode: str, ckpt: Path, out: Path, arg: str) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, str(ckpt), str(out), arg]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(mode: str, ckpt: Path, out: Path, dtype: str) -> Dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    result = in_subprocess(mode, ckpt, out, dtype)
    result["output_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return result


def same_tensors(a: Path, b: Path, names: List[str]) -> bool:
    from safetensors import safe_open

    def find(directory: Path, name: str) -> torch.Tensor:
        index_file = directory / "model.safetensors.index.json"
        file = json.loads(index_file.read_text())["weight_map"][name] if index_file.is_file() else "model.safetensors"
        with safe_open(str(directory / file), framework="pt") as handle:
            return handle.get_tensor(name)

    return all(torch.equal(find(a, n), find(b, n)) for n in names)


def full_model_bytes() -> int:
    from eurotron.convert.families import tensor_specs

    return sum(torch.Size(s.shape).numel() * 4 for s in tensor_specs(model_config(FULL_LAYERS)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, ckpt, out, arg = sys.argv
        child(mode, Path(ckpt), Path(out), arg)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="2,4", help="comma-separated layer counts (default 2,4)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/eurotron_convert_bench"))
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    args = p.parse_args()
    layer_counts = sorted(int(x) for x in args.layers.split(","))
    results: Dict[int, Dict[str, Dict[str, float]]] = {}
    shutil.rmtree(args.work_dir, ignore_errors=True)
    for layers in layer_counts:
        root = args.work_dir / f"l{layers}"
        info = in_subprocess("make", root / "ckpt", root, str(layers))
        print(f"[{layers} layers] checkpoint {info['checkpoint_bytes'] / GB:.2f} GB written in {info['write_s']:.0f} s "
              f"(peak RSS {info['peak_rss_bytes'] / GB:.2f} GB); largest tensor {info['largest_bytes'] / GB:.2f} GB",
              flush=True)
        results[layers] = {"checkpoint": info}
        modes = ["streaming"] if args.skip_naive or layers != layer_counts[-1] else ["streaming", "naive"]
        for mode in modes:
            r = measure(mode, root / "ckpt", root / mode, args.dtype)
            results[layers][mode] = r
            print(f"[{layers} layers] {mode:9s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_bytes'] / GB:6.2f} GB  "
                  f"output {r['output_bytes'] / GB:.2f} GB", flush=True)
        if "naive" in results[layers]:
            names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                     "lm_head.weight"]
            results[layers]["outputs_equal"] = same_tensors(root / "streaming", root / "naive", names)
            print(f"[{layers} layers] streaming and naive outputs equal: {results[layers]['outputs_equal']}")
        if not args.keep:
            shutil.rmtree(root)
    largest = results[layer_counts[-1]]["checkpoint"]["largest_bytes"]
    summary = {"dtype": args.dtype, "largest_tensor_bytes": largest, "goal_peak_rss_bytes": 2 * GB + largest,
               "results": results}
    biggest = results[layer_counts[-1]]
    scale = full_model_bytes() / biggest["checkpoint"]["checkpoint_bytes"]
    summary["checkpoint_32_layers_bytes"] = full_model_bytes()
    for mode in ("streaming", "naive"):
        if mode in biggest:
            summary[f"{mode}_32_layers_s"] = biggest[mode]["seconds"] * scale
    if "naive" in biggest:
        summary["naive_32_layers_peak_rss_bytes"] = biggest["naive"]["peak_rss_bytes"] * scale
    print(f"32 layers ({full_model_bytes() / GB:.1f} GB fp32 checkpoint), scaled by bytes from {layer_counts[-1]} layers: "
          + ", ".join(f"{k} {v:.0f}" for k, v in summary.items() if k.endswith("_s"))
          + (f" s; naive peak RSS ~{summary['naive_32_layers_peak_rss_bytes'] / GB:.0f} GB"
             if "naive_32_layers_peak_rss_bytes" in summary else " s"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
