"""eurotron-convert: eurotron checkpoints to and from Hugging Face format.

  eurotron-convert to-hf runs/demo runs/demo/hf                     # bf16 (or the imported model's dtype), 5GB shards
  eurotron-convert to-hf runs/x/checkpoints/step_00001000 out/ --dtype fp32 --max-shard-size 2GB
  eurotron-convert from-hf /models/Llama-3.1-8B ckpt/llama31_8b     # then: eurotron-train train.init_from=...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import exit_on_user_error

APP = "eurotron-convert"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=APP, description=__doc__.split("\n\n")[0],
                                epilog="\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf}")

    to_hf = sub.add_parser("to-hf", help="checkpoint (any parallel layout) -> Hugging Face directory")
    to_hf.add_argument("checkpoint", type=Path, help="run dir, its checkpoints/ dir, or one step_* dir")
    to_hf.add_argument("out_dir", type=Path, help="output directory (created; must be new or empty)")
    to_hf.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                       help="weights dtype (default: the dtype of the Hugging Face model it was imported from, "
                            "else bf16); a value beyond fp16's range is an error, not inf")
    to_hf.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB, 500MB (default: 5GB)")

    from_hf = sub.add_parser("from-hf", help="Hugging Face Llama/Mistral/Apertus -> checkpoint for train.init_from")
    from_hf.add_argument("hf_dir", help="local HF model directory (or a Hub id such as org/name when online)")
    from_hf.add_argument("checkpoint", type=Path, help="output checkpoint directory (created; must be new or empty)")
    from_hf.add_argument("--name", default=None, help="model config name (default: from the HF directory's name)")

    for parser in (to_hf, from_hf):
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p.parse_args(argv)


def _warn(warnings) -> None:
    for warning in warnings:
        print(f"{APP}: warning: {warning}", file=sys.stderr)


def run(args: argparse.Namespace):
    progress = not args.no_progress
    if args.command == "to-hf":
        from ..convert.safetensors_writer import parse_size
        from ..convert.to_hf import convert_to_hf

        result = convert_to_hf(args.checkpoint, args.out_dir, dtype=args.dtype,
                               max_shard_size=parse_size(args.max_shard_size), overwrite=args.overwrite,
                               progress=progress)
        _warn(result.warnings)
        print(f"wrote {result.out_dir}: {result.family}, {result.num_params:,} parameters, {result.dtype}, "
              f"{result.shards} shard(s), {result.total_bytes / 1e9:.2f} GB", flush=True)
        return result
    from ..convert.from_hf import convert_from_hf

    result = convert_from_hf(args.hf_dir, args.checkpoint, name=args.name, overwrite=args.overwrite,
                             progress=progress)
    _warn(result.warnings)
    print(f"wrote {result.ckpt_dir}: {result.family}, {result.num_params:,} parameters (model config "
          f"{result.model_config_file})\ncontinue pre-training with:\n  {result.usage()}", flush=True)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    exit_on_user_error(APP, lambda: run(args))


if __name__ == "__main__":
    main()
