"""Greedy completions from a Hugging Face model directory with transformers alone (no eurotron code).

    python scripts/hf_generate.py runs/demo/hf --prompt "Die Bibliothek" --prompt "La ville"

The end of ``make demo``: proof that ``eurotron-convert to-hf`` output loads with
``AutoModelForCausalLM`` + ``AutoTokenizer``. Prompts are encoded without special tokens, as
``eurotron-generate`` does, so both print the same greedy completion.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a directory written by eurotron-convert to-hf (or any HF causal LM)")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    args = p.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    print(f"[transformers {type(model).__name__}] loaded {args.model_dir}", flush=True)
    for prompt in args.prompt or ["Europe"]:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, repetition_penalty=args.repetition_penalty, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        print(f"[hf] {tokenizer.decode(out[0], skip_special_tokens=True)}", flush=True)


if __name__ == "__main__":
    main()
