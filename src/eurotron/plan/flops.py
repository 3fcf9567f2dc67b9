"""Matmul weights and model FLOPs per token from a model config alone (torch-free: the planner,
MFU at run time and the GPU smoke script all count the same way)."""

from __future__ import annotations

from ..config import ModelConfig


def matmul_parameters(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul for every token: all linears, output projection included."""
    dim, head_dim = cfg.hidden_size, cfg.resolved_head_dim
    attention = dim * head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    ffn = (3 if cfg.mlp == "swiglu" else 2) * dim * cfg.ffn_hidden_size
    return cfg.num_layers * (attention + ffn) + cfg.vocab_size * dim


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward, the PaLM (appendix B) / Megatron convention:

        6 * N  +  12 * num_layers * (num_heads * head_dim) * seq_len

    ``N`` is the number of matmul weights (``matmul_parameters``: every linear layer including the
    output projection, but not the embedding lookup, norms or activation scalars); each weight costs
    2 FLOPs per token forward and 4 backward. The second term is attention itself: ``Q K^T`` and
    ``A V`` cost ``2 * seq_len * num_heads * head_dim`` FLOPs each per token and layer forward, times
    3 for forward + backward. Following the convention, the causal mask's skipped half is not
    subtracted, and neither activation recomputation nor elementwise work is counted, so MFU stays
    comparable across implementations.
    """
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
    return float(6 * matmul_parameters(cfg) + attention)
