"""DCP checkpoints ⇄ Hugging Face safetensors for the Llama, Mistral and Apertus families."""

from .errors import ConvertError
from .from_hf import convert_from_hf
from .to_hf import convert_to_hf

__all__ = ["ConvertError", "convert_from_hf", "convert_to_hf"]
