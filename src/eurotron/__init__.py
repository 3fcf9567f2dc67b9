"""eurotron: 3D-parallel pre-training of Llama-family models on EuroHPC systems."""

__version__ = "0.1.0"
