"""model/linear.py: oneDNN fp32 CPU linears agree with PyTorch's and step aside where they must."""

from __future__ import annotations

import pytest
import torch

from eurotron.config import ModelConfig
from eurotron.model import build_model
from eurotron.model import linear as lin
from eurotron.model.linear import Linear, cpu_matmul, onednn_available, set_cpu_matmul

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture(autouse=True)
def restore_backend():
    before = cpu_matmul()
    yield
    set_cpu_matmul(before)


def forward_backward(module: torch.nn.Module, x: torch.Tensor, backend: str):
    set_cpu_matmul(backend)
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), x.grad, module.weight.grad


@pytest.mark.parametrize("in_features,out_features", [(64, 192), (192, 64), (48, 48), (32, 1000)])
def test_onednn_matches_aten_forward_and_both_gradients(in_features, out_features):
    torch.manual_seed(0)
    module = Linear(in_features, out_features)
    x = torch.randn(3, 7, in_features)
    ours = forward_backward(module, x, "onednn")
    reference = forward_backward(module, x, "aten")
    for got, want in zip(ours, reference):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_onednn_path_is_taken_for_fp32_cpu_and_skipped_otherwise(monkeypatch):
    calls = []
    real = lin._OneDNNLinear.apply
    monkeypatch.setattr(lin._OneDNNLinear, "apply", lambda *a: calls.append(1) or real(*a))
    module = Linear(16, 8)
    module(torch.randn(2, 16))
    assert calls == [1]
    module(torch.randn(2, 16).double().float())  # still fp32: taken
    assert calls == [1, 1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module(torch.randn(2, 16)).dtype == torch.bfloat16
    module.to(torch.bfloat16)(torch.randn(2, 16, dtype=torch.bfloat16))
    with torch.device("meta"):
        assert Linear(16, 8)(torch.randn(2, 16)).shape == (2, 8)
    set_cpu_matmul("aten")
    Linear(16, 8)(torch.randn(2, 16))
    assert calls == [1, 1]


def test_compiled_module_runs_the_custom_op_and_matches_eager():
    torch.manual_seed(0)
    module = Linear(32, 96)
    x = torch.randn(4, 32)
    eager = torch.nn.functional.silu(module(x))
    compiled = torch.compile(lambda t: torch.nn.functional.silu(module(t)))(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


def test_whole_model_logits_and_gradients_match_aten():
    cfg = ModelConfig(name="t", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      ffn_hidden_size=160, max_seq_len=32)
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=3)
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("onednn", "aten"):
        set_cpu_matmul(backend)
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        logits.logsumexp(-1).mean().backward()
        results[backend] = (logits.detach(), model.output.weight.grad.clone(),
                            model.layers["0"].attention.wq.weight.grad.clone())
    for got, want in zip(results["onednn"], results["aten"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="cpu_matmul='mkl'"):
        set_cpu_matmul("mkl")
    with pytest.raises(ValueError, match="no bias"):
        Linear(4, 4, bias=True)
