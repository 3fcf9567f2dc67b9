"""eurotron-generate: complete a prompt with a trained checkpoint.

  eurotron-generate runs/demo --prompt "Die Bibliothek" --max-new-tokens 40
  eurotron-generate runs/demo/checkpoints/step_00000300 --strategy top_p --top-p 0.9 --seed 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint_args import check_checkpoint_path
from .common import exit_on_user_error


class GenerateArgError(UserError, ValueError):
    """A sampling setting that cannot work."""


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


def _pick(flag_value, config_value):
    """The command line's value when given (0 included), else the run's generate.* value."""
    return config_value if flag_value is None else flag_value


def sampling_settings(args: argparse.Namespace, g) -> dict:
    """The effective settings, each checked; errors name the flag (or the run's key) and the fix."""
    s = {key: _pick(getattr(args, key), getattr(g, key))
         for key in ("max_new_tokens", "strategy", "temperature", "top_p", "seed", "repetition_penalty")}
    flag = {key: f"--{key.replace('_', '-')}" if getattr(args, key) is not None else f"generate.{key}" for key in s}
    problems = []
    if s["max_new_tokens"] < 0:
        problems.append(f"{flag['max_new_tokens']}={s['max_new_tokens']}: must be >= 0 (0 prints the prompt only)")
    if s["strategy"] not in ("greedy", "top_p"):
        problems.append(f"{flag['strategy']}={s['strategy']!r}: choose greedy or top_p")
    if s["strategy"] == "top_p":
        if not s["temperature"] > 0 or s["temperature"] == float("inf"):
            problems.append(f"{flag['temperature']}={s['temperature']}: top_p sampling needs a finite temperature "
                            f"> 0; for the most likely token every step use --strategy greedy")
        if not 0 < s["top_p"] <= 1:
            problems.append(f"{flag['top_p']}={s['top_p']}: must lie in (0, 1]")
    elif s["temperature"] < 0:
        problems.append(f"{flag['temperature']}={s['temperature']}: must be >= 0")
    if not s["repetition_penalty"] > 0 or s["repetition_penalty"] == float("inf"):
        problems.append(f"{flag['repetition_penalty']}={s['repetition_penalty']}: must be a finite number > 0 "
                        f"(1.0 = off)")
    if s["seed"] < 0:
        problems.append(f"{flag['seed']}={s['seed']}: must be >= 0")
    if problems:
        raise GenerateArgError("invalid generation settings:\n  " + "\n  ".join(problems))
    return s


def prompt_ids(tokenizer, prompt: str) -> list:
    """Documents are packed without BOS, each ending with EOS, so a prompt starts like a document.
    An empty prompt means "a new document": the model continues from EOS, as after any document."""
    return tokenizer.encode(prompt) or [tokenizer.eos_id]


def run(args: argparse.Namespace) -> list:
    from ..data.tokenizer import Tokenizer
    from ..generation import generate, load_model_from_checkpoint

    check_checkpoint_path(args.checkpoint)
    model, cfg, ckpt = load_model_from_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.load(ckpt / "tokenizer")
    g = cfg.generate
    settings = sampling_settings(args, g)
    prompts = [g.prompt] if args.prompt is None else args.prompt
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, prompt)])
        new = generate(
            model,
            ids,
            max_new_tokens=settings["max_new_tokens"],
            max_seq_len=cfg.model.max_seq_len,
            strategy=settings["strategy"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            eos_id=tokenizer.eos_id,
            seed=settings["seed"],
            repetition_penalty=settings["repetition_penalty"],
            vocab_limit=tokenizer.vocab_size,
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
