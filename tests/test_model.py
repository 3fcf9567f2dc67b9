"""The model package: published sizes, equivalence with transformers, packing, init, GQA, PP-readiness."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from eurotron.config import ModelConfig, RopeScalingConfig
from eurotron.model import (
    Transformer,
    build_model,
    count_parameters,
    document_causal_mask,
    init_weights,
    matmul_parameters,
    model_flops_per_token,
)
from eurotron.model.rope import rope_inv_freq

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def load_model_config(name: str) -> ModelConfig:
    raw = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=96,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        ffn_hidden_size=96,
        max_seq_len=64,
        norm_eps=1e-5,
    )
    base.update(overrides)
    return ModelConfig(**base)


def materialise(cfg: ModelConfig, seed: int = 0) -> Transformer:
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model


def randomise_norms(model: Transformer, seed: int = 0) -> None:
    """Give norm weights and xIELU scalars non-default values so a wrong weight mapping shows up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
            elif name.endswith(("alpha_p", "alpha_n")):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))


# ------------------------------------------------------------------------------------ configs, sizes
@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama2_7b", 6_738_415_616),
        ("llama3_8b", 8_030_261_248),
        ("llama3_1_8b", 8_030_261_248),
        ("mistral_7b", 7_241_732_096),
        ("llama3_70b", 70_553_706_496),
    ],
)
def test_published_parameter_counts_on_meta(name, expected):
    model = build_model(load_model_config(name), "meta")
    assert all(p.is_meta for p in model.parameters())
    assert count_parameters(model) == expected


@pytest.mark.parametrize("name, low, high", [("apertus_8b", 8.0e9, 8.1e9), ("apertus_70b", 70.0e9, 71.0e9)])
def test_apertus_builds_on_meta(name, low, high):
    cfg = load_model_config(name)
    model = build_model(cfg, "meta")
    n = count_parameters(model)
    print(f"{name}: {n:,} parameters")
    assert low < n < high
    layer = model.layers["0"]
    assert layer.attention.q_norm is not None and layer.attention.k_norm is not None
    assert layer.feed_forward.act.alpha_p.shape == (1,)
    assert not hasattr(layer.feed_forward, "w3")


def test_every_model_yaml_is_a_valid_model_config():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"tiny", "llama2_7b", "llama3_8b", "mistral_7b", "llama3_70b", "apertus_8b", "apertus_70b"} <= set(names)
    for name in names:
        cfg = load_model_config(name)
        assert cfg.name == name
        assert cfg.hidden_size % cfg.num_heads == 0 and cfg.num_heads % cfg.num_kv_heads == 0
    tiny = load_model_config("tiny")
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_layers, tiny.max_seq_len) == (8192, 256, 4, 1024)


def test_model_flops_per_token_formula():
    cfg = load_model_config("llama3_8b")
    n_matmul = count_parameters(build_model(cfg, "meta")) - cfg.vocab_size * cfg.hidden_size - (
        (2 * cfg.num_layers + 1) * cfg.hidden_size
    )  # everything but the embedding table and the norm weights
    assert matmul_parameters(cfg) == n_matmul
    seq = 4096
    expected = 6 * n_matmul + 12 * cfg.num_layers * cfg.hidden_size * seq
    assert model_flops_per_token(cfg, seq) == expected
    assert model_flops_per_token(cfg, 2 * seq) > model_flops_per_token(cfg, seq)


# ------------------------------------------------------------------------ equivalence with transformers
def _hf_rope_parameters(cfg: ModelConfig) -> dict:
    if cfg.rope_scaling.type == "none":
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    s = cfg.rope_scaling
    return {
        "rope_type": "llama3",
        "rope_theta": cfg.rope_theta,
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
    }


def _hf_common_kwargs(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=_hf_rope_parameters(cfg),
        tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation="eager",
    )


def to_hf_state_dict(model: Transformer, family: str) -> dict:
    """Our FQNs -> transformers' (the mapping the converter will use); q/k need no permutation."""
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"]}
    out["lm_head.weight"] = sd["output.weight"]
    for i in range(model.cfg.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        for a, b in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            out[f"{hf}self_attn.{b}.weight"] = sd[f"{ours}attention.{a}.weight"]
        if family == "apertus":
            out[f"{hf}attention_layernorm.weight"] = sd[f"{ours}attention_norm.weight"]
            out[f"{hf}feedforward_layernorm.weight"] = sd[f"{ours}ffn_norm.weight"]
            out[f"{hf}self_attn.q_norm.weight"] = sd[f"{ours}attention.q_norm.weight"]
            out[f"{hf}self_attn.k_norm.weight"] = sd[f"{ours}attention.k_norm.weight"]
            out[f"{hf}mlp.up_proj.weight"] = sd[f"{ours}feed_forward.w1.weight"]
            out[f"{hf}mlp.down_proj.weight"] = sd[f"{ours}feed_forward.w2.weight"]
            act = model.layers[str(i)].feed_forward.act
            out[f"{hf}mlp.act_fn.alpha_p"] = sd[f"{ours}feed_forward.act.alpha_p"]
            out[f"{hf}mlp.act_fn.alpha_n"] = sd[f"{ours}feed_forward.act.alpha_n"]
            out[f"{hf}mlp.act_fn.beta"] = torch.tensor(act.beta)
            out[f"{hf}mlp.act_fn.eps"] = torch.tensor(act.eps)
        else:
            out[f"{hf}input_layernorm.weight"] = sd[f"{ours}attention_norm.weight"]
            out[f"{hf}post_attention_layernorm.weight"] = sd[f"{ours}ffn_norm.weight"]
            out[f"{hf}mlp.gate_proj.weight"] = sd[f"{ours}feed_forward.w1.weight"]
            out[f"{hf}mlp.up_proj.weight"] = sd[f"{ours}feed_forward.w3.weight"]
            out[f"{hf}mlp.down_proj.weight"] = sd[f"{ours}feed_forward.w2.weight"]
    return out


def hf_twin(model: Transformer):
    cfg = model.cfg
    if cfg.family == "apertus":
        from transformers import ApertusConfig, ApertusForCausalLM

        hf = ApertusForCausalLM(ApertusConfig(**_hf_common_kwargs(cfg), hidden_act="xielu"))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaForCausalLM(LlamaConfig(**_hf_common_kwargs(cfg)))
    hf = hf.float().eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model, cfg.family), strict=True)
    assert not missing and not unexpected
    return hf


LLAMA3_SMALL_CONTEXT = RopeScalingConfig(
    type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32
)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rope_scaling": LLAMA3_SMALL_CONTEXT, "rope_theta": 500000.0},
        {"num_kv_heads": 4},  # MHA
        {"num_kv_heads": 1},  # MQA
        {"head_dim": 32, "tie_embeddings": True},
    ],
    ids=["llama", "llama3-rope-scaling", "mha", "mqa", "head_dim-tied"],
)
def test_logits_match_transformers_llama(overrides):
    model = materialise(tiny_cfg(**overrides), seed=1).eval()
    randomise_norms(model)
    hf = hf_twin(model)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_packed_rows_match_transformers_packed_sequence_support():
    """transformers also reads packed documents from position_ids (when no mask or cache is given)."""
    model = materialise(tiny_cfg(rope_scaling=LLAMA3_SMALL_CONTEXT), seed=8).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(2))
    positions = torch.stack([
        torch.cat([torch.arange(25), torch.arange(15)]),
        torch.cat([torch.arange(7), torch.arange(30), torch.arange(3)]),
    ])
    with torch.no_grad():
        theirs = hf(input_ids=ids, position_ids=positions, use_cache=False).logits
        torch.testing.assert_close(model(ids, positions), theirs, rtol=1e-4, atol=1e-5)


def test_llama3_scaling_changes_frequencies():
    plain = rope_inv_freq(16, 10000.0)
    scaled = rope_inv_freq(16, 10000.0, LLAMA3_SMALL_CONTEXT)
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 8], plain[wavelen < 8])  # high frequencies untouched
    torch.testing.assert_close(scaled[wavelen > 32], plain[wavelen > 32] / 4)  # low ones slowed 4x
    medium = (wavelen >= 8) & (wavelen <= 32)
    assert medium.any() and (scaled[medium] < plain[medium]).all() and (scaled[medium] > plain[medium] / 4).all()


def test_logits_match_transformers_apertus():
    pytest.importorskip("transformers.models.apertus")
    cfg = tiny_cfg(
        family="apertus", mlp="xielu", qk_norm=True, rope_theta=12e6, rope_scaling=LLAMA3_SMALL_CONTEXT
    )
    model = materialise(cfg, seed=2).eval()
    randomise_norms(model, seed=3)
    hf = hf_twin(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------- packed sequences
def test_document_masking_equals_separate_documents():
    model = materialise(tiny_cfg(), seed=3).eval()
    gen = torch.Generator().manual_seed(5)
    doc_a = torch.randint(0, 96, (1, 20), generator=gen)
    doc_b = torch.randint(0, 96, (1, 12), generator=gen)
    packed = torch.cat([doc_a, doc_b], dim=1)
    positions = torch.cat([torch.arange(20), torch.arange(12)])[None]
    with torch.no_grad():
        together = model(packed, positions)
        alone_a = model(doc_a)
        alone_b = model(doc_b)
        # A second row without any restart shares the batch with the packed one.
        plain_row = torch.randint(0, 96, (1, 32), generator=gen)
        batch = model(torch.cat([packed, plain_row]), torch.cat([positions, torch.arange(32)[None]]))
    torch.testing.assert_close(together[:, :20], alone_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[:, 20:], alone_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[:1], together, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[1:], model(plain_row), rtol=1e-5, atol=1e-5)

    # Without document masking, doc B sees doc A: the check above would fail.
    leaky = materialise(dataclasses.replace(tiny_cfg(), document_masking=False), seed=3).eval()
    with torch.no_grad():
        leaked = leaky(packed, positions)
    assert not torch.allclose(leaked[:, 20:], alone_b, atol=1e-3)
    torch.testing.assert_close(leaked[:, :20], alone_a, rtol=1e-5, atol=1e-5)


def test_document_masking_blocks_gradients_across_documents():
    model = materialise(tiny_cfg(), seed=6)
    embed = model.tok_embeddings
    model.tok_embeddings = None  # feed hidden states so we can differentiate w.r.t. each position
    hidden = embed(torch.randint(0, 96, (2, 32))).detach().requires_grad_()
    positions = torch.cat([torch.arange(20), torch.arange(12)])[None].expand(2, 32)
    model(hidden, positions)[:, 20:].sum().backward()
    assert hidden.grad[:, :20].abs().max() == 0  # doc B never looked at doc A
    assert hidden.grad[:, 20:].abs().min() > 0


def test_document_causal_mask_shape_and_fast_path():
    assert document_causal_mask(None) is None
    assert document_causal_mask(torch.arange(8)[None].repeat(3, 1)) is None
    # A row that starts mid-document (no 0 at all) is still one causal document.
    assert document_causal_mask(torch.arange(5, 13)[None]) is None
    mask = document_causal_mask(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]))
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0, 0], expected)
    assert torch.equal(mask[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())


def test_position_ids_none_equals_arange():
    model = materialise(tiny_cfg(), seed=4).eval()
    ids = torch.randint(0, 96, (3, 24))
    with torch.no_grad():
        default = model(ids)
        explicit = model(ids, torch.arange(24)[None].expand(3, 24))
        shifted = model(ids, torch.arange(5, 29)[None].expand(3, 24))
        stretched = model(ids, 2 * torch.arange(24)[None].expand(3, 24))
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    # RoPE is relative: a uniform shift changes (almost) nothing, other distances do.
    torch.testing.assert_close(default, shifted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(default, stretched, atol=1e-3)


# ------------------------------------------------------------------------------ meta init, weights
def test_meta_build_to_empty_init_is_finite_and_deterministic():
    cfg = tiny_cfg(num_layers=4)
    a, b, c = materialise(cfg, seed=7), materialise(cfg, seed=7), materialise(cfg, seed=8)
    assert not any(p.is_meta for p in a.parameters()) and not a.rope_cache.is_meta
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), name
        if pa.numel() > 1 and not name.endswith("norm.weight"):
            assert not torch.equal(pa, pc), name
    assert "rope_cache" not in a.state_dict()
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    logits = a(ids)
    assert logits.shape == (2, 16, cfg.vocab_size) and torch.isfinite(logits).all()
    logits.float().logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in a.parameters())

    std, n = cfg.init_std, cfg.num_layers
    assert torch.equal(a.layers["1"].ffn_norm.weight, torch.ones(cfg.hidden_size))
    assert abs(a.tok_embeddings.weight.std().item() - std) < 0.1 * std
    assert abs(a.layers["0"].feed_forward.w1.weight.std().item() - std) < 0.1 * std
    scaled = std / math.sqrt(2 * n)
    assert abs(a.layers["0"].feed_forward.w2.weight.std().item() - scaled) < 0.1 * scaled
    assert abs(a.layers["0"].attention.wo.weight.std().item() - scaled) < 0.1 * scaled


def test_init_weights_covers_every_parameter():
    cfg = tiny_cfg(family="apertus", mlp="xielu", qk_norm=True, tie_embeddings=True)
    model = build_model(cfg, "cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan"))
    model.init_weights(seed=0)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor).all(), name
    act = model.layers["0"].feed_forward.act
    torch.testing.assert_close(torch.nn.functional.softplus(act.alpha_p), torch.tensor([0.8]))
    torch.testing.assert_close(act.beta + torch.nn.functional.softplus(act.alpha_n), torch.tensor([0.8]))


def test_init_does_not_depend_on_which_layers_exist():
    cfg = tiny_cfg(num_layers=4)
    full = materialise(cfg, seed=11)
    stage = build_model(cfg, "meta")
    del stage.layers["0"], stage.layers["1"]
    stage.tok_embeddings = None
    stage.to_empty(device="cpu")
    init_weights(stage, seed=11)
    assert torch.equal(stage.layers["3"].attention.wq.weight, full.layers["3"].attention.wq.weight)
    assert torch.equal(stage.output.weight, full.output.weight)
    # Wrappers (activation checkpointing, torch.compile) do not change the values either.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wrapped = build_model(cfg, "meta")
    wrapped.layers["2"] = checkpoint_wrapper(wrapped.layers["2"])
    wrapped.to_empty(device="cpu")
    wrapped.init_weights(seed=11)
    assert torch.equal(wrapped.layers["2"].attention.wk.weight, full.layers["2"].attention.wk.weight)


def test_tied_embeddings_share_storage_and_count_once():
    untied = build_model(tiny_cfg(), "meta")
    tied_cfg = tiny_cfg(tie_embeddings=True)
    tied = materialise(tied_cfg, seed=0)
    assert tied.output.weight is tied.tok_embeddings.weight
    assert tied.output.weight.data_ptr() == tied.tok_embeddings.weight.data_ptr()
    assert count_parameters(untied) - count_parameters(tied) == 96 * 64
    assert count_parameters(tied, exclude_embeddings=True) == count_parameters(tied) - 96 * 64
    assert count_parameters(untied, exclude_embeddings=True) == count_parameters(untied) - 96 * 64
    logits = tied(torch.randint(0, 96, (1, 8)))
    logits.sum().backward()
    assert tied.tok_embeddings.weight.grad is not None


# ------------------------------------------------------------------------------------ PP readiness
def test_pipeline_style_stages_reproduce_the_full_model():
    cfg = tiny_cfg(num_layers=4)
    full = materialise(cfg, seed=5).eval()
    first, last = build_model(cfg, "meta"), build_model(cfg, "meta")
    for stage in (first, last):
        stage.to_empty(device="cpu")
        stage.load_state_dict(full.state_dict())
        stage.reset_rope()
    del first.layers["2"], first.layers["3"]
    first.norm = first.output = None
    del last.layers["0"], last.layers["1"]
    last.tok_embeddings = None
    assert set(dict(last.named_parameters())) <= set(dict(full.named_parameters()))
    ids = torch.randint(0, 96, (2, 30))
    positions = torch.cat([torch.arange(10), torch.arange(20)])[None].expand(2, 30)
    with torch.no_grad():
        hidden = first(ids, positions)
        assert hidden.shape == (2, 30, cfg.hidden_size)
        torch.testing.assert_close(last(hidden, positions), full(ids, positions), rtol=0, atol=0)


def test_block_traces_without_graph_breaks():
    model = materialise(tiny_cfg(), seed=0)
    h = torch.randn(2, 16, 64)
    rope = (torch.randn(1, 16, 1, 8), torch.randn(1, 16, 1, 8))
    explanation = torch._dynamo.explain(model.layers["0"])(h, rope, None)
    assert explanation.graph_break_count == 0
