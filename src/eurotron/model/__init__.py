"""The Llama-family transformer (plain PyTorch; parallelism is applied by ``eurotron.parallel``)."""

from .attention import Attention, attention_forward
from .masks import build_attention_mask, document_causal_mask
from .norms import RMSNorm
from .sizing import count_parameters, matmul_parameters, model_flops_per_token
from .transformer import FeedForward, Transformer, TransformerBlock, build_model


def init_weights(model: Transformer, seed: int | None = None) -> Transformer:
    """Function form of ``Transformer.init_weights``; returns the model for chaining."""
    model.init_weights(seed=seed)
    return model


__all__ = [
    "Attention",
    "FeedForward",
    "RMSNorm",
    "Transformer",
    "TransformerBlock",
    "attention_forward",
    "build_attention_mask",
    "build_model",
    "count_parameters",
    "document_causal_mask",
    "init_weights",
    "matmul_parameters",
    "model_flops_per_token",
]
