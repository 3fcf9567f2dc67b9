"""Shared pieces of the converter tests: tiny configs per family, random HF twins, eurotron checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import torch
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf
from safetensors import safe_open

from eurotron.config import ModelConfig, RopeScalingConfig
from eurotron.model import Transformer, build_model

VOCAB = 512  # the test tokenizer's size
SMALL_ROPE = RopeScalingConfig(type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=32)

FAMILY_CONFIGS: Dict[str, dict] = {
    "llama": dict(family="llama", rope_theta=500000.0, rope_scaling=SMALL_ROPE),
    "llama-tied-mqa-headdim": dict(family="llama", tie_embeddings=True, num_kv_heads=1, head_dim=32),
    "mistral": dict(family="mistral"),
    "apertus": dict(family="apertus", mlp="xielu", qk_norm=True, rope_theta=12e6, rope_scaling=SMALL_ROPE),
}


def small_config(name: str) -> ModelConfig:
    base = dict(name=name.replace("-", "_"), vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2, ffn_hidden_size=96, max_seq_len=64, norm_eps=1e-5)
    base.update(FAMILY_CONFIGS[name])
    return ModelConfig(**base)


def hf_rope(cfg: ModelConfig) -> dict:
    if cfg.rope_scaling.type == "none":
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    s = cfg.rope_scaling
    return {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings}


def random_hf_model(cfg: ModelConfig, seed: int = 0):
    """A transformers model of the family, built from transformers' own config class (not the converter's),
    with random weights and non-default norm / xIELU values so that any mix-up shows."""
    import transformers

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters=hf_rope(cfg), tie_word_embeddings=cfg.tie_embeddings, bos_token_id=1, eos_token_id=2,
        pad_token_id=3,
    )
    if cfg.family == "apertus":
        config = transformers.ApertusConfig(**common, hidden_act="xielu")
        cls = transformers.ApertusForCausalLM
    elif cfg.family == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=None)
        cls = transformers.MistralForCausalLM
    else:
        config = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
            elif name.endswith(("alpha_p", "alpha_n")):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
            elif param.dim() == 2:
                param.normal_(0.0, 0.05, generator=gen)
    return model


def random_eurotron_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
            elif name.endswith(("alpha_p", "alpha_n")):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
    return model.eval()


def save_eurotron_checkpoint(model: Transformer, step_dir: Path, config_yaml: str, tokenizer_dir: Path | None,
                             trainer_state: dict) -> Path:
    """A step directory as CheckpointManager lays it out (model state only, single process)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    step_dir.mkdir(parents=True)
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(step_dir / "model_optim"))
    (step_dir / "config.yaml").write_text(config_yaml)
    (step_dir / "trainer.json").write_text(json.dumps(trainer_state))
    if tokenizer_dir is not None:
        import shutil

        shutil.copytree(tokenizer_dir, step_dir / "tokenizer")
    return step_dir


def run_config_yaml(cfg: ModelConfig, **sections) -> str:
    doc = {"name": cfg.name, "model": OmegaConf.to_container(OmegaConf.structured(cfg)), **sections}
    return OmegaConf.to_yaml(OmegaConf.create(doc))


def read_safetensors_dir(directory: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of an HF directory (all shards), by name."""
    out: Dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                assert name not in out, f"{name} appears in two shards"
                out[name] = handle.get_tensor(name)
    return out
