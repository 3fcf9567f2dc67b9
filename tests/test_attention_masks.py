"""Attention masks (model/masks.py) and kernels: the dense reference, FlexAttention's forward on CPU,
sliding windows, no device sync while building masks, the pipeline handoff and the config checks.

FlexAttention's backward has no CPU kernel in torch 2.13: benchmarks/gpu_smoke.py checks it on a GPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from torch.utils._python_dispatch import TorchDispatchMode

from eurotron.compose import compose_train
from eurotron.config import ConfigError, ModelConfig
from eurotron.convert.errors import ConvertError
from eurotron.convert.families import hf_config_dict, tensor_specs
from eurotron.data.loader import make_batch
from eurotron.model import attention_forward, build_attention_mask, build_model
from eurotron.model.masks import document_ids, mask_mod, resolve_backend
from eurotron.parallel.pipeline import build_stage, stage_layer_ranges
from eurotron.validation import validate_train_config

# Eager flex_attention (CPU) warns that it is unfused: expected here, these tests check values only.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# Two packed rows: three documents (the first starting mid-document, at position 5), and one document.
POSITIONS = torch.tensor([list(range(5, 15)) + list(range(20)) + list(range(7)), list(range(37))])


def rule(position_ids: torch.Tensor, window: int) -> torch.Tensor:
    """The masking rule written out token by token, independently of model/masks.py: [B, 1, L, L]."""
    batch, length = position_ids.shape
    out = torch.zeros(batch, 1, length, length, dtype=torch.bool)
    for b in range(batch):
        doc, docs = 0, []
        for t in range(length):
            doc += int(t > 0 and position_ids[b, t] == 0)
            docs.append(doc)
        for q in range(length):
            for kv in range(q + 1):
                out[b, 0, q, kv] = docs[q] == docs[kv] and (window == 0 or q - kv < window)
    return out


def tiny(**overrides) -> ModelConfig:
    base = dict(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=96,
                max_seq_len=64)
    base.update(overrides)
    return ModelConfig(**base)


def materialise(cfg: ModelConfig, seed: int = 0):
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model.eval()


# ------------------------------------------------------------------------------- the rule, densely
@pytest.mark.parametrize("window", [0, 1, 4])
def test_dense_mask_is_the_rule(window):
    mask = build_attention_mask(POSITIONS, 37, torch.device("cpu"), backend="sdpa", document_masking=True,
                                sliding_window=window)
    assert mask.dtype == torch.bool and torch.equal(mask, rule(POSITIONS, window))
    # Without document masking only the window (if any) remains, broadcast over the batch.
    plain = build_attention_mask(POSITIONS, 37, torch.device("cpu"), backend="sdpa", document_masking=False,
                                 sliding_window=window)
    if window == 0:
        assert plain is None
    else:
        assert torch.equal(plain.expand(2, 1, 37, 37), rule(torch.arange(37).expand(2, 37), window))


def test_plain_causal_rows_need_no_mask():
    one_doc = torch.arange(5, 20).expand(3, 15)  # positions that never restart: one document per row
    for backend in ("sdpa", "flex"):
        assert build_attention_mask(one_doc, 15, torch.device("cpu"), backend=backend, document_masking=True) is None
        assert build_attention_mask(None, 15, torch.device("cpu"), backend=backend, document_masking=True) is None


def test_loader_boundaries_restart_after_eos():
    eos = 2
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 50, size=(4, 65))
    tokens[0, [3, 4, 20, 63]] = eos  # an empty document (EOS EOS) and an EOS at the last input
    tokens[1, 0] = eos
    batch = make_batch(tokens, eos)
    docs = document_ids(batch["position_ids"])
    assert docs.dtype == torch.int32
    inputs = batch["input_ids"]
    for b in range(4):
        for t in range(1, inputs.shape[1]):
            # A new document starts exactly on the token after an EOS input, as position_ids restart.
            starts = bool(inputs[b, t - 1] == eos)
            assert int(docs[b, t] - docs[b, t - 1]) == int(starts)
            assert (batch["position_ids"][b, t] == 0) == starts


# ------------------------------------------------------------------------------- flex vs reference
CASES = {  # name: (document masking, window)
    "causal": (False, 0),
    "documents": (True, 0),
    "window": (False, 5),
    "documents+window": (True, 5),
}


@pytest.mark.parametrize("case", list(CASES))
# GQA over two 128-token blocks plus a partial one; plain multi-head attention on one partial block.
@pytest.mark.parametrize("heads,kv_heads,length", [(4, 2, 200), (4, 4, 37)])
def test_flex_forward_equals_dense_reference(case, heads, kv_heads, length):
    documents, window = CASES[case]
    gen = torch.Generator().manual_seed(length + heads * kv_heads)
    positions = torch.stack([torch.arange(length) % 29, torch.arange(length) % 61])  # restarts every 29 / 61
    q = torch.randn(2, heads, length, 16, generator=gen)
    k, v = (torch.randn(2, kv_heads, length, 16, generator=gen) for _ in range(2))
    cpu = torch.device("cpu")
    flex = build_attention_mask(positions, length, cpu, backend="flex", document_masking=documents,
                                sliding_window=window)
    dense = build_attention_mask(positions, length, cpu, backend="sdpa", document_masking=documents,
                                 sliding_window=window)
    if case == "causal":  # plain causal takes SDPA's is_causal; compare flex's causal block mask to it
        assert flex is None and dense is None
        flex = create_block_mask(mask_mod(None, 0), None, None, length, length, device=cpu)
    else:
        assert isinstance(flex, BlockMask) and isinstance(dense, torch.Tensor)
    expected = attention_forward(q, k, v, dense)
    torch.testing.assert_close(attention_forward(q, k, v, flex), expected, rtol=1e-5, atol=1e-5)
    if case != "causal":  # the mask matters: plain causal attention gives something else
        assert not torch.allclose(attention_forward(q, k, v, None), expected, atol=1e-3)


def test_model_flex_equals_sdpa_with_documents_and_window():
    ids = torch.randint(0, 96, (2, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = materialise(tiny(attention="sdpa", sliding_window=6), seed=3)(ids, POSITIONS)
        flex = materialise(tiny(attention="flex", sliding_window=6), seed=3)(ids, POSITIONS)
        no_window = materialise(tiny(attention="sdpa"), seed=3)(ids, POSITIONS)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(no_window, dense, atol=1e-3)


def test_sliding_window_receptive_field():
    """With 2 layers and window 4, token 0 reaches positions up to 2 * (4 - 1) = 6, and no further."""
    model = materialise(tiny(document_masking=False, sliding_window=4), seed=1)
    ids = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(4))
    other = ids.clone()
    other[0, 0] = 1
    with torch.no_grad():
        diff = (model(ids) - model(other)).abs().amax(dim=-1)[0]
    assert (diff[:7] > 1e-6).all()
    assert (diff[7:] == 0).all()


def test_a_window_as_long_as_the_sequence_keeps_plain_causal_attention():
    """An imported Mistral-7B-v0.1 (window 4096) trained at seq_len <= 4096 takes SDPA's causal kernels."""
    cpu = torch.device("cpu")
    for backend in ("sdpa", "flex"):
        assert build_attention_mask(None, 16, cpu, backend=backend, document_masking=False, sliding_window=16) is None
        assert build_attention_mask(None, 17, cpu, backend=backend, document_masking=False, sliding_window=16) is not None


def test_mistral_sliding_window_equals_transformers():
    """The window convention (a token sees itself and window-1 before it) is Hugging Face's, and the
    converter writes it to config.json."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny(family="mistral", sliding_window=5, document_masking=False)
    model = materialise(cfg, seed=5)
    hf_cfg = hf_config_dict(cfg, "float32")
    assert hf_cfg["sliding_window"] == 5
    hf = transformers.MistralForCausalLM(transformers.MistralConfig(**hf_cfg, attn_implementation="eager")).float()
    sd = model.state_dict()
    hf.load_state_dict({s.hf: sd[s.ours] for s in tensor_specs(cfg) if not s.tied}, strict=True)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    assert hf_config_dict(dataclasses.replace(cfg, sliding_window=0), "float32")["sliding_window"] is None
    with pytest.raises(ConvertError, match="model.sliding_window=5"):
        hf_config_dict(dataclasses.replace(cfg, family="llama"), "float32")


# ---------------------------------------------------------------------------------- no host syncs
class CountSyncs(TorchDispatchMode):
    """Counts device->host reads (``.item()``, ``bool(tensor)``, ``int(tensor)`` all end in this op)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_model_forward_with_document_masking_reads_nothing_back():
    model = materialise(tiny(attention="sdpa", sliding_window=6), seed=0)
    ids = torch.randint(0, 96, (2, 37))
    with torch.no_grad(), CountSyncs() as syncs:
        model(ids, POSITIONS)
        model(ids, torch.arange(37).expand(2, 37))  # the boundary-free fast path decides without a read
    assert syncs.count == 0
    with CountSyncs() as syncs:  # the flex mask is built without a read too (flex itself: GPU script)
        build_attention_mask(POSITIONS, 37, torch.device("cpu"), backend="flex", document_masking=True,
                             sliding_window=6)
    assert syncs.count == 0


# ------------------------------------------------------------------------------------ the pipeline
def test_pipeline_stages_rebuild_the_mask_from_position_ids():
    """A BlockMask cannot be sent between stages: each stage builds its own from the position_ids the
    schedule hands every stage, and the split model equals the whole one."""
    cfg = tiny(num_layers=4, attention="flex", sliding_window=7)
    whole = materialise(cfg, seed=8)
    ranges = stage_layer_ranges(cfg.num_layers, 2)
    stages = [build_stage(cfg, s, ranges, device="meta") for s in range(2)]
    for stage in stages:
        stage.to_empty(device="cpu")
        stage.load_state_dict({k: v for k, v in whole.state_dict().items() if k in stage.state_dict()})
        stage.reset_rope()
    ids = torch.randint(0, 96, (2, 37))
    with torch.no_grad():
        split = stages[1](stages[0](ids, POSITIONS), POSITIONS)
        torch.testing.assert_close(split, whole(ids, POSITIONS), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- the config
def test_backend_resolution():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, masked=True) == "sdpa"
    assert resolve_backend("auto", gpu, masked=True) == "flex"
    assert resolve_backend("auto", gpu, masked=False) == "sdpa"
    assert resolve_backend("flex", cpu, masked=True) == "flex"
    with pytest.raises(ValueError, match="model.attention='xformers'"):
        resolve_backend("xformers", gpu, masked=True)


@pytest.mark.parametrize(
    "overrides,key,fix",
    [
        (["model.attention=xformers"], "model.attention='xformers'", "one of auto, sdpa, flex"),
        (["model.attention=flex", "cluster.device=cpu"], "model.attention='flex'", "model.attention=auto or sdpa"),
        (["model.sliding_window=-1"], "model.sliding_window=-1", "zero or positive"),
    ],
)
def test_validation_names_key_and_fix(overrides, key, fix):
    cfg, _ = compose_train(["experiment=demo", "parallel=single"] + overrides)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=1)
    assert key in str(err.value) and fix in str(err.value), str(err.value)


def test_valid_attention_settings_pass():
    cfg, _ = compose_train(["experiment=demo", "parallel=single", "model.sliding_window=64", "model.attention=sdpa"])
    validate_train_config(cfg, world_size=1)
    # A window as long as the sequence changes nothing in training but is part of the model (an imported
    # Mistral-7B-v0.1 keeps its 4096 at any seq_len, and exports it).
    cfg, _ = compose_train(["experiment=demo", "parallel=single", "model.sliding_window=256", "data.seq_len=256"])
    validate_train_config(cfg, world_size=1)


def test_flex_is_refused_for_training_on_a_cpu_device():
    from eurotron.config import ConfigError
    from eurotron.model.masks import check_trainable

    with pytest.raises(ConfigError, match="model.attention=flex: this run is on the CPU"):
        check_trainable("flex", torch.device("cpu"))
    for choice in ("auto", "sdpa"):
        check_trainable(choice, torch.device("cpu"))
    check_trainable("flex", torch.device("cuda", 0))
