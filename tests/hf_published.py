"""Hugging Face directories shaped like published models: config.json and generation_config.json with the
published keys, ids, dtype and sliding window, tiny dimensions, random weights, and no tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}

# config.json and generation_config.json as published (dimensions replaced by TINY).
PUBLISHED: Dict[str, Dict[str, Any]] = {
    "Llama-3.1-8B-Instruct": {
        "config": {
            "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
            "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
        },
        "generation": {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
                       "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.43.0.dev0"},
    },
    "Llama-3.2-1B": {
        "config": {
            "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
            "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
            "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
            "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
        },
        "generation": {"_from_model_config": True, "bos_token_id": 128000, "do_sample": True, "eos_token_id": 128001,
                       "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0.dev0"},
        "tiny": {"head_dim": 8},
    },
    "Mistral-7B-v0.1": {
        "config": {
            "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
            "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000,
        },
        "generation": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                       "transformers_version": "4.34.0.dev0"},
        "tiny": {"sliding_window": 8},  # so that a 32-token test sequence is longer than the window
    },
    "Llama-2-7b-hf": {
        "config": {
            "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
            "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
            "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
        },
        "generation": {"bos_token_id": 1, "do_sample": True, "eos_token_id": 2, "max_length": 4096,
                       "pad_token_id": 0, "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.31.0.dev0"},
    },
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def published_config(name: str) -> Dict[str, Any]:
    entry = PUBLISHED[name]
    return {**entry["config"], **TINY, **entry.get("tiny", {})}


def write_published_hf_dir(name: str, out: Path, seed: int = 0) -> Path:
    """``out`` with random weights in the published dtype and the published config files, written last
    (transformers' save_pretrained rewrites config.json in its own form)."""
    import transformers

    config = published_config(name)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    hf_config = transformers.AutoConfig.from_pretrained(out)  # read as transformers reads the published file
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
            else:
                param.normal_(0.0, 0.05, generator=gen)
    model.to(DTYPES[config["torch_dtype"]]).save_pretrained(out)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(PUBLISHED[name]["generation"], indent=2))
    return out


def hf_model(directory: Path, attn: str = "sdpa", **overrides):
    """transformers' model of ``directory`` in fp32 (``overrides`` change its config, e.g. sliding_window)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory, attn_implementation=attn, **overrides)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=torch.float32)
    return model.eval()
