"""Greedy and nucleus (top-p) sampling from a eurotron model, and loading one from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from .config import TrainConfig, load_config_file, to_object
from .model import build_model
from .train.checkpoint import CONFIG_FILE, load_checkpoint, resolve_checkpoint


def load_model_from_checkpoint(path: Path, device: str = "cpu") -> Tuple[torch.nn.Module, TrainConfig, Path]:
    """Build the model a checkpoint was trained with and load its weights (any layout that wrote it)."""
    ckpt = resolve_checkpoint(Path(path))
    cfg: TrainConfig = to_object(load_config_file(ckpt / CONFIG_FILE, "checkpoint config"), TrainConfig)
    model = build_model(cfg.model, device="meta")
    model.to_empty(device=device)
    model.init_weights(seed=0)
    load_checkpoint(ckpt, model, optimizer=None)
    model.eval()
    return model, cfg, ckpt


def _sample_top_p(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
    outside = cumulative - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(dim=-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice)


def _penalise_repeats(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    seen = logits.gather(-1, tokens)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, tokens, seen)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    max_seq_len: int,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_p: float = 0.9,
    eos_id: Optional[int] = None,
    seed: int = 0,
    repetition_penalty: float = 1.0,
    vocab_limit: Optional[int] = None,
) -> torch.Tensor:
    """Extend `prompt_ids` ([B, L]) by up to max_new_tokens tokens; returns only the new tokens.

    Recomputes the whole (cropped) context each step: simple and exact; fine for the short
    completions used in demos and memorisation audits. ``repetition_penalty`` > 1 discourages tokens
    already in the sequence, as transformers' ``generate(repetition_penalty=...)`` does (CTRL's rule:
    a positive logit is divided by it, a negative one multiplied), so both give the same tokens.
    ``vocab_limit``: ids at or above it are never produced (a model whose vocab_size is padded beyond
    its tokenizer's would otherwise emit ids the tokenizer cannot decode).
    """
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty={repetition_penalty}: must be positive (1.0 = off)")
    if strategy not in ("greedy", "top_p"):
        raise ValueError(f"generate.strategy={strategy!r}: choose greedy or top_p")
    generator = torch.Generator(device=prompt_ids.device).manual_seed(seed)
    tokens = prompt_ids
    finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    new_tokens = []
    for _ in range(max_new_tokens):
        context = tokens[:, -max_seq_len:]
        logits = model(context)[:, -1, :].float()
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits[:, vocab_limit:] = float("-inf")
        if repetition_penalty != 1.0:
            logits = _penalise_repeats(logits, tokens, repetition_penalty)
        if strategy == "greedy":
            next_token = logits.argmax(dim=-1, keepdim=True)
        else:
            next_token = _sample_top_p(logits / temperature, top_p, generator)
        if eos_id is not None:
            next_token = next_token.masked_fill(finished.unsqueeze(-1), eos_id)
            finished |= next_token.squeeze(-1) == eos_id
        new_tokens.append(next_token)
        tokens = torch.cat([tokens, next_token], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    return torch.cat(new_tokens, dim=1) if new_tokens else prompt_ids[:, :0]
