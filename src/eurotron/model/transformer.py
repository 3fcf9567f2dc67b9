"""The Llama-family decoder (Llama 2/3, Mistral, Apertus) in plain PyTorch.

Structure and parameter names follow torchtitan, so tensor-parallel plans, pipeline splitting and
FSDP2 wrapping (all applied later by ``eurotron.parallel``) address stable FQNs::

    tok_embeddings                               nn.Embedding [vocab, dim]
    layers.<i>.attention_norm                    RMSNorm
    layers.<i>.attention.{wq,wk,wv,wo}           nn.Linear (oneDNN on CPU, model/linear.py), no bias
    layers.<i>.attention.{q_norm,k_norm}         RMSNorm over head_dim (only with qk_norm, Apertus)
    layers.<i>.ffn_norm                          RMSNorm
    layers.<i>.feed_forward.{w1,w2,w3}           swiglu: w2(silu(w1 x) * w3 x)
    layers.<i>.feed_forward.{w1,w2,act}          xielu:  w2(xielu(w1 x)), act.alpha_p / act.alpha_n
    norm                                         RMSNorm
    output                                       nn.Linear [vocab, dim], no bias (tied: the embedding)

``layers`` is an ``nn.ModuleDict`` keyed "0", "1", ...: a pipeline stage deletes the layers it does not
own and sets ``tok_embeddings`` / ``norm`` / ``output`` to None when it does not own them; the FQNs of
everything left stay the same, so checkpoints are layout-independent.
"""

from __future__ import annotations

import zlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .activations import XIELU
from .attention import Attention
from .linear import Linear
from .masks import AttentionMask, build_attention_mask, resolve_backend
from .norms import RMSNorm
from .rope import rope_cos_sin, rope_table


class FeedForward(nn.Module):
    """SwiGLU (``w1`` gate, ``w3`` up, ``w2`` down) or xIELU (``w1`` up, ``w2`` down) MLP."""

    def __init__(self, dim: int, hidden_dim: int, kind: str = "swiglu") -> None:
        super().__init__()
        if kind not in ("swiglu", "xielu"):
            raise ValueError(f"unknown mlp {kind!r}; expected 'swiglu' or 'xielu'")
        self.kind = kind
        self.w1 = Linear(dim, hidden_dim, bias=False)
        self.w2 = Linear(hidden_dim, dim, bias=False)
        if kind == "swiglu":
            self.w3 = Linear(dim, hidden_dim, bias=False)
        else:
            self.act = XIELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(self.act(self.w1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``h = x + attn(norm(x)); out = h + ffn(norm(h))``."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attention = Attention(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.resolved_head_dim,
            qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps,
        )
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.ffn_hidden_size, cfg.mlp)

    def forward(
        self,
        x: torch.Tensor,
        rope: Tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings: Optional[nn.Embedding] = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg, i) for i in range(cfg.num_layers)})
        self.norm: Optional[RMSNorm] = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.output: Optional[nn.Linear] = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # cos|sin table; not persistent: it is recomputed from the config, never checkpointed.
        self.register_buffer(
            "rope_cache", torch.empty(cfg.max_seq_len, cfg.resolved_head_dim), persistent=False
        )

    # ------------------------------------------------------------------------------------ forward
    def forward(self, h: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids ``[B, L]`` (or, on a later pipeline stage, hidden states ``[B, L, D]``) to logits
        ``[B, L, vocab]`` (or hidden states when this stage has no ``norm``/``output``).

        ``position_ids`` ``[B, L]`` default to ``arange(L)``. With ``cfg.document_masking`` a packed row
        whose positions restart at 0 attends only within each document; ``cfg.sliding_window`` limits
        how far back a token looks; RoPE always uses the given positions. The mask is built here, once
        per micro-batch (on a pipeline stage: from the ``position_ids`` every stage receives), and
        shared by every block.
        """
        if self.tok_embeddings is not None:
            h = self.tok_embeddings(h)
        length = h.shape[1]
        if length > self.rope_cache.shape[0]:
            raise ValueError(f"sequence length {length} exceeds max_seq_len={self.rope_cache.shape[0]}")
        rope = rope_cos_sin(self.rope_cache, length, position_ids)
        # The full sequence length: under sequence parallelism h holds only this rank's shard of it.
        full_length = position_ids.shape[-1] if position_ids is not None else length
        mask = self.attention_mask(position_ids, full_length, h.device)
        for layer in self.layers.values():
            h = layer(h, rope, mask)
        if self.norm is not None:
            h = self.norm(h)
        if self.output is not None:
            h = self.output(h)
        return h

    def attention_mask(self, position_ids: Optional[torch.Tensor], length: int, device: torch.device) -> AttentionMask:
        cfg = self.cfg
        masked = cfg.document_masking or cfg.sliding_window > 0
        return build_attention_mask(position_ids, length, device,
                                    backend=resolve_backend(cfg.attention, device, masked),
                                    document_masking=cfg.document_masking, sliding_window=cfg.sliding_window)

    # ------------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def reset_rope(self) -> None:
        """(Re)compute the RoPE table in place on the buffer's device (after ``to_empty``)."""
        if self.rope_cache.is_meta:
            return
        cfg = self.cfg
        table = rope_table(
            cfg.max_seq_len, cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling, self.rope_cache.device
        )
        self.rope_cache.copy_(table)

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None) -> None:
        """Initialise every parameter and buffer in place; allocates nothing (meta tensors are skipped).

        * embeddings and linears: ``normal(0, init_std)``;
        * residual-branch output projections ``wo`` and ``w2``: ``normal(0, init_std / sqrt(2 * num_layers))``
          (GPT-2 / Megatron scaled init: two residual additions per layer);
        * RMSNorm weights: ones; xIELU: Hugging Face's initial values; the RoPE table: recomputed.

        With ``seed`` every parameter draws from its own generator seeded by ``(seed, FQN)``, so a value
        depends only on the seed and the parameter's name, not on which other modules exist (a pipeline
        stage holding layers 4-7 gets the same layers 4-7 as the whole model). Without a seed the
        global RNG is used.
        """
        self._retie()
        self.reset_rope()
        std = self.cfg.init_std
        scaled_std = std / (2 * self.cfg.num_layers) ** 0.5
        done: set[int] = set()
        for name, module in self.named_modules():
            if isinstance(module, (RMSNorm, XIELU)):
                module.reset_parameters()
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                weight = module.weight
                if id(weight) in done or weight.is_meta:
                    continue
                done.add(id(weight))
                leaf = name.rsplit(".", 1)[-1]
                sigma = scaled_std if leaf in ("wo", "w2") else std
                nn.init.normal_(weight, 0.0, sigma, generator=_generator(seed, f"{name}.weight", weight))

    def _retie(self) -> None:
        """Re-establish ``output.weight is tok_embeddings.weight`` (``to_empty`` may replace Parameters)."""
        if self.cfg.tie_embeddings and self.tok_embeddings is not None and self.output is not None:
            self.output.weight = self.tok_embeddings.weight

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        out = super()._apply(fn, recurse)
        self._retie()
        return out


# Segments that wrappers (activation checkpointing, torch.compile, FSDP1) insert into FQNs.
_WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def _generator(seed: Optional[int], fqn: str, tensor: torch.Tensor) -> Optional[torch.Generator]:
    """A generator seeded by ``(seed, fqn)``, with wrapper segments removed from the FQN."""
    if seed is None:
        return None
    for segment in _WRAPPER_SEGMENTS:
        fqn = fqn.replace(segment, "")
    device = tensor.device if not hasattr(tensor, "to_local") else tensor.to_local().device
    generator = torch.Generator(device=device)
    generator.manual_seed((int(seed) * 1_000_003 + zlib.crc32(fqn.encode())) % (2**63))
    return generator


def build_model(cfg: ModelConfig, device: str | torch.device = "meta") -> Transformer:
    """Construct the model under ``torch.device(device)`` without initialising it.

    The usual flow (a 70B model costs no memory on ``meta``)::

        model = build_model(cfg, "meta")
        # ... apply parallelism (TP plans, pipeline split, FSDP2) ...
        model.to_empty(device="cuda")
        model.init_weights(seed=cfg_seed)

    On a real device, call ``init_weights`` before use too: norms, xIELU scalars and the RoPE table
    start as uninitialised memory.
    """
    with torch.device(device):
        return Transformer(cfg)
