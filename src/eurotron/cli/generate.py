"""eurotron-generate: complete a prompt with a trained checkpoint.

  eurotron-generate runs/demo --prompt "Die Bibliothek" --max-new-tokens 40
  eurotron-generate runs/demo/checkpoints/step_00000300 --strategy top_p --top-p 0.9 --seed 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eurotron-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="run dir, its checkpoints/ dir, or one step_* dir")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for several); default: the run's generate.prompt")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--strategy", choices=("greedy", "top_p"), default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="> 1 discourages repeats, as transformers' repetition_penalty (default: the run's)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list:
    from ..data.tokenizer import Tokenizer
    from ..generation import generate, load_model_from_checkpoint

    model, cfg, ckpt = load_model_from_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.load(ckpt / "tokenizer")
    g = cfg.generate
    prompts = args.prompt or [g.prompt]
    outputs = []
    for prompt in prompts:
        # Documents are packed without BOS (each ends with EOS), so a prompt starts like a document.
        ids = torch.tensor([tokenizer.encode(prompt)])
        new = generate(
            model,
            ids,
            max_new_tokens=args.max_new_tokens or g.max_new_tokens,
            max_seq_len=cfg.model.max_seq_len,
            strategy=args.strategy or g.strategy,
            temperature=args.temperature or g.temperature,
            top_p=args.top_p or g.top_p,
            eos_id=tokenizer.eos_id,
            seed=g.seed if args.seed is None else args.seed,
            repetition_penalty=g.repetition_penalty if args.repetition_penalty is None else args.repetition_penalty,
        )
        # Decode prompt and completion together so word boundaries (SentencePiece's "▁") survive.
        full = tokenizer.decode(ids[0].tolist() + new[0].tolist())
        prefix = tokenizer.decode(ids[0].tolist())
        completion = full[len(prefix):] if full.startswith(prefix) else tokenizer.decode(new[0].tolist())
        outputs.append(completion)
        print(f"[{ckpt.name}] {prompt}{completion}", flush=True)
    return outputs


def main(argv=None) -> None:
    args = parse_args(argv)
    exit_on_user_error("eurotron-generate", lambda: run(args))


if __name__ == "__main__":
    main()
