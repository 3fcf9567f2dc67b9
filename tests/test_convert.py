"""eurotron-convert: per-family equivalence with transformers, bitwise round trips, tokenizer, model card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from convert_support import (
    VOCAB,
    read_safetensors_dir,
    random_eurotron_model,
    random_hf_model,
    run_config_yaml,
    save_eurotron_checkpoint,
    small_config,
)
from eurotron.config import HFExportConfig
from eurotron.convert import ConvertError, convert_from_hf, convert_to_hf
from eurotron.convert.families import hf_config_dict, model_config_from_hf
from eurotron.generation import generate, load_model_from_checkpoint

FAMILIES = ["llama", "llama-tied-mqa-headdim", "mistral", "apertus"]
# Architecture fields a converted config.json must carry unchanged.
CONFIG_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                 "tie_word_embeddings", "hidden_act", "rope_parameters")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from eurotron.data.tokenizer import train_sentencepiece
    from eurotron.paths import DEMO_CORPUS

    texts = [json.loads(line)["text"] for line in DEMO_CORPUS.read_text().splitlines() if line.strip()]
    out = tmp_path_factory.mktemp("tokenizer")
    train_sentencepiece(texts, out, vocab_size=VOCAB, max_training_chars=60_000)
    return out


def _prompt(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (1, 8), generator=torch.Generator().manual_seed(seed))


def _hf_greedy(hf, ids: torch.Tensor, n: int, repetition_penalty: float = 1.0) -> torch.Tensor:
    hf.generation_config.eos_token_id = None  # never stop early: compare all n tokens
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0,
                      repetition_penalty=repetition_penalty)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_matches_transformers_and_round_trips_bitwise(family, tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = small_config(family)
    hf = random_hf_model(cfg, seed=FAMILIES.index(family))
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir, max_shard_size="60KB")  # several shards + index on the way in
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (hf_dir / name).write_bytes((tokenizer_dir / name).read_bytes())
    assert (hf_dir / "model.safetensors.index.json").is_file()

    result = convert_from_hf(hf_dir, tmp_path / "ckpt", progress=False)
    assert result.family == cfg.family and not result.warnings

    # eurotron's model on the imported weights computes transformers' logits and greedy tokens.
    model, run_cfg, _ = load_model_from_checkpoint(tmp_path / "ckpt")
    assert run_cfg.model.tie_embeddings == cfg.tie_embeddings and run_cfg.model.resolved_head_dim == cfg.resolved_head_dim
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    prompt = _prompt()
    new = generate(model, prompt, max_new_tokens=20, max_seq_len=cfg.max_seq_len)
    assert torch.equal(new, _hf_greedy(hf, prompt, 20))
    penalised = generate(model, prompt, max_new_tokens=20, max_seq_len=cfg.max_seq_len, repetition_penalty=1.5)
    assert torch.equal(penalised, _hf_greedy(hf, prompt, 20, repetition_penalty=1.5))
    assert not torch.equal(penalised, new)  # the penalty changed the text, the same way in both

    # ... and back: every tensor bitwise equal to what transformers saved (fp32 in, fp32 out).
    out = tmp_path / "hf_again"
    convert_to_hf(tmp_path / "ckpt", out, dtype="fp32", max_shard_size=50_000, progress=False, block_bytes=4096)
    original, again = read_safetensors_dir(hf_dir), read_safetensors_dir(out)
    assert sorted(original) == sorted(again)
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype and torch.equal(again[name], tensor), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(original) and len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original.values())

    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert type(reloaded).__name__ == type(hf).__name__
    original_cfg, new_cfg = hf.config.to_dict(), reloaded.config.to_dict()
    for key in CONFIG_FIELDS:
        assert new_cfg.get(key) == original_cfg.get(key), key
    with torch.no_grad():
        assert torch.equal(reloaded.float().eval()(input_ids=ids).logits, theirs)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "</s>" and tok.decode(tok("Europa")["input_ids"]).strip() == "Europa"


@pytest.mark.parametrize("family", ["llama", "apertus"])
def test_to_hf_of_a_trained_checkpoint(family, tokenizer_dir, tmp_path):
    """A checkpoint as the trainer writes it -> bf16 HF directory: weights, config, tokenizer and model card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eurotron.data.tokenizer import Tokenizer

    cfg = small_config(family)
    model = random_eurotron_model(cfg, seed=3)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "manifest.json").write_text(json.dumps({"documents": {"read": 12, "kept": 10, "languages": {"de": 4}},
                                                        "splits": {"train": {"docs": 10, "tokens": 4321}}}))
    (data_dir / "report.json").write_text(json.dumps({"summary": {"removed": {"robots_gptbot": 7, "pii_emails": 3}}}))
    yaml_text = run_config_yaml(
        cfg, data={"path": str(data_dir), "seq_len": 32, "global_batch_size": 4},
        loss={"name": "goldfish", "k": 4, "h": 13, "strategy": "hash", "start": 0},
    )
    ckpt = save_eurotron_checkpoint(model, tmp_path / "run" / "checkpoints" / "step_00000012", yaml_text,
                                    tokenizer_dir, {"step": 12, "tokens_seen": 1536})
    (ckpt.parent / "latest").write_text(ckpt.name + "\n")

    out = tmp_path / "hf"
    result = convert_to_hf(tmp_path / "run", out, progress=False)  # a run dir resolves to its latest step
    assert result.family == family and not result.warnings

    tensors = read_safetensors_dir(out)
    state = model.state_dict()
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert torch.equal(tensors["model.layers.1.self_attn.k_proj.weight"],
                       state["layers.1.attention.wk.weight"].to(torch.bfloat16))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "apertus": "ApertusForCausalLM"}[family]]
    assert (config["bos_token_id"], config["eos_token_id"], config["dtype"]) == (1, 2, "bfloat16")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2

    # transformers on the bf16 weights == eurotron on the same bf16-rounded weights (both in fp32).
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
        ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
        assert (model(ids) - hf(input_ids=ids).logits).abs().max().item() <= 1e-4

    text = "Die Bibliothek der Stadt öffnet um 9 Uhr."
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == Tokenizer.load(tokenizer_dir).encode(text)
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "</s>"

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for expected in ("Tokens seen: 1,536", "Optimizer steps: 12", "Goldfish loss", "| `loss.k` | 4 |",
                     "| `loss.h` | 13 |", "removed.robots_gptbot: 7", "4,321 tokens", "```yaml"):
        assert expected in card, expected
    assert (out / "data_report.json").is_file()


def test_model_card_without_goldfish_or_report(tmp_path):
    cfg = small_config("mistral")
    yaml_text = run_config_yaml(cfg, data={"path": str(tmp_path / "nowhere")}, loss={"name": "standard"})
    save_eurotron_checkpoint(random_eurotron_model(cfg), tmp_path / "step", yaml_text, None, {"step": 1, "tokens_seen": 64})
    result = convert_to_hf(tmp_path / "step", tmp_path / "hf", progress=False)
    assert any("tokenizer" in w for w in result.warnings)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "Goldfish loss was **not** used" in card and "was not reachable" in card
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["sliding_window"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_config_json_round_trips_the_model_config(family):
    cfg = small_config(family)
    cfg.hf = HFExportConfig(bos_token_id=1, eos_token_id=[2, 7], dtype="bfloat16")
    if family == "mistral":
        cfg.sliding_window = 16
    back, fam, warnings = model_config_from_hf(hf_config_dict(cfg, "bfloat16"), cfg.name)
    assert back == cfg and fam.name == cfg.family and not warnings


def test_legacy_rope_keys_are_read():
    cfg = small_config("llama")
    hf = hf_config_dict(cfg, "float32")
    del hf["rope_parameters"]  # a transformers-4 config.json: rope_theta + rope_scaling only
    back = model_config_from_hf(hf, cfg.name)[0]
    assert back.hf.dtype == "float32" and dataclasses.replace(back, hf=cfg.hf) == cfg
    plain = {k: v for k, v in hf_config_dict(small_config("mistral"), "float32").items() if not k.startswith("rope")}
    back = model_config_from_hf(plain, "m")[0]
    assert back.rope_theta == 10000.0 and back.rope_scaling.type == "none"


def test_mistral_sliding_window_is_modelled():
    hf = hf_config_dict(small_config("mistral"), "float32")
    assert model_config_from_hf(hf, "m")[0].sliding_window == 0  # null: full attention
    hf["sliding_window"] = 16
    cfg, _, warnings = model_config_from_hf(hf, "m")
    assert cfg.sliding_window == 16 and not warnings
    hf["sliding_window"] = "wide"
    with pytest.raises(ConvertError, match="sliding_window='wide' must be a positive integer or null"):
        model_config_from_hf(hf, "m")
