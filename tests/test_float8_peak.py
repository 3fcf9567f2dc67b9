"""Issue 13: train.float8 refusals (config time and on the device), peak FLOP/s detection for MFU, and the
allocator setting in the job environment."""

import importlib.machinery
import sys
import types

import pytest
import torch
from torch import nn

from eurotron.compose import compose_train
from eurotron.config import ConfigError
from eurotron.model import build_model
from eurotron.parallel import float8
from eurotron.plan.gpus import gpu_vendor, match_gpu
from eurotron.train import mfu as mfu_mod
from eurotron.validation import validate_train_config

from launch_support import render, system_overrides


def _validate(*overrides):
    cfg, _ = compose_train(["data.path=/d", *overrides])
    validate_train_config(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ float8
@pytest.mark.parametrize("overrides, named", [
    (["cluster.device=cpu"], "cluster.device=cpu"),
    (["cluster=leonardo"], "A100"),
    (["cluster=meluxina"], "A100"),
    (["cluster=lumi"], "MI250X"),
])
def test_float8_refused_at_config_time_where_the_hardware_has_no_fp8(overrides, named):
    with pytest.raises(ConfigError) as err:
        _validate("train.float8=true", *overrides)
    line = next(l for l in str(err.value).splitlines() if "train.float8" in l)
    assert named in line and "train.float8=false" in line


def test_float8_accepted_on_h100_and_gh200_clusters():
    for cluster in ("jeanzay", "marenostrum5", "jupiter", "alps"):
        assert _validate("train.float8=true", f"cluster={cluster}").train.float8
    _validate("cluster=leonardo")  # off: an A100 cluster is fine


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device whose capability, name and ROCm arch the test chooses."""
    def make(capability=(9, 0), name="NVIDIA H100 80GB HBM3", hip=None, arch=""):
        monkeypatch.setattr(torch.version, "hip", hip)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: types.SimpleNamespace(gcnArchName=arch))
        return torch.device("cuda", 0)
    return make


def _model():
    cfg, _ = compose_train(["model=tiny"])
    return build_model(cfg.model, device="meta")


def test_apply_float8_refuses_cpu_a100_and_mi250x(fake_gpu):
    with pytest.raises(ConfigError, match="this run is on cpu"):
        float8.apply_float8(_model(), True, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"compute capability >= 8\.9.*A100-SXM4-80GB is sm80"):
        float8.apply_float8(_model(), True, fake_gpu((8, 0), "NVIDIA A100-SXM4-80GB"))
    with pytest.raises(ConfigError, match="gfx90a"):
        mi250x = fake_gpu((9, 0), "AMD Instinct MI250X", hip="6.2", arch="gfx90a:sramecc+:xnack-")
        float8.apply_float8(_model(), True, mi250x)
    assert float8.apply_float8(_model(), False, torch.device("cpu")) == 0  # off: nothing checked or converted


def test_apply_float8_without_torchao_says_how_to_install(fake_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import (and find_spec) fail as if not installed
    real_find_spec = float8.importlib.util.find_spec
    monkeypatch.setattr(float8.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="torchao is not installed.*pip install torchao"):
        float8.apply_float8(_model(), True, fake_gpu((9, 0)))


def test_apply_float8_converts_the_block_linears_but_not_the_output(fake_gpu, monkeypatch):
    seen = []

    class Float8Linear(nn.Linear):
        pass

    def convert(module, *, module_filter_fn):  # a stand-in for torchao's swap, recording the filter's picks
        for fqn, child in list(module.named_modules()):
            if fqn and module_filter_fn(child, fqn):
                seen.append(fqn)
                parent, _, leaf = fqn.rpartition(".")
                new = Float8Linear(child.in_features, child.out_features, bias=False, device="meta")
                setattr(module.get_submodule(parent) if parent else module, leaf, new)
        return module

    pkg = types.ModuleType("torchao")
    pkg.__spec__ = importlib.machinery.ModuleSpec("torchao", None)
    sub = types.ModuleType("torchao.float8")
    sub.convert_to_float8_training = convert
    monkeypatch.setitem(sys.modules, "torchao", pkg)
    monkeypatch.setitem(sys.modules, "torchao.float8", sub)
    model = _model()
    assert float8.apply_float8(model, True, fake_gpu((9, 0))) == len(seen) == 7 * len(model.layers)
    assert "output" not in seen and "layers.0.attention.wq" in seen and "layers.0.feed_forward.w2" in seen
    assert type(model.output) is not Float8Linear


# -------------------------------------------------------------------------------------- peak FLOP/s
@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("AMD Instinct MI250X / MI250", 191.5e12), ("AMD Instinct MI300X", 1307e12),
])
def test_known_gpus_peak(name, peak):
    assert mfu_mod.detect_peak_flops(torch.device("cuda", 0), gpu_name=name) == peak


def test_unknown_gpu_warns_and_mfu_is_null_unless_peak_is_set(fake_gpu, capsys):
    mfu_mod._resolved.cache_clear()
    device = fake_gpu((12, 0), "Future GPU 9000")
    assert mfu_mod.mfu(1e15, None, device) is None
    assert "unknown GPU 'Future GPU 9000'" in capsys.readouterr().err
    assert mfu_mod.mfu(1e15, 2e15, device, world_size=2) == pytest.approx(0.25)  # cluster.peak_flops wins
    mfu_mod._resolved.cache_clear()
    h100 = fake_gpu((9, 0), "NVIDIA H100 80GB HBM3")
    assert mfu_mod.mfu(494.5e12, None, h100) == pytest.approx(0.5)
    mfu_mod._resolved.cache_clear()


def test_local_cluster_detects_while_eurohpc_clusters_keep_their_peaks():
    local = _validate("cluster=local")
    assert local.cluster.peak_flops is None
    assert mfu_mod.mfu(1.9e11, local.cluster.peak_flops, torch.device("cpu")) == pytest.approx(1.0)
    assert _validate("cluster=lumi").cluster.peak_flops == 1.915e14
    assert _validate("cluster=jeanzay").cluster.peak_flops == 9.89e14
    with pytest.raises(ConfigError, match="cluster.peak_flops=-1.0: must be positive"):
        _validate("cluster.peak_flops=-1")


# ------------------------------------------------------------------------------------ job environment
def test_vendor_from_gpu_model():
    assert gpu_vendor("MI250X GCD") == "amd" and gpu_vendor("H100 64 GB") == "nvidia"
    assert gpu_vendor("GH200 (H100 96 GB)") == "nvidia" and match_gpu("GH200 (H100 96 GB)").name == "GH200"
    assert gpu_vendor("GPU") is None


@pytest.mark.parametrize("system, variable, absent", [
    ("lumi", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"),
    ("jupiter", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"),
    ("leonardo", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"),
    ("generic", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"),
])
def test_job_environment_sets_expandable_segments_per_vendor(system, variable, absent, tmp_path):
    script = render(system_overrides(system), tmp_path / "run").script
    assert f'{variable}="expandable_segments:True"' in script and absent not in script
    override = render(system_overrides(system, f"+cluster.env.{variable}=garbage_collection_threshold:0.8"),
                      tmp_path / "run2").script
    assert f'{variable}="garbage_collection_threshold:0.8"' in override  # cluster.env wins
    assert "expandable_segments" not in override


def test_cpu_cluster_job_has_no_allocator_setting(tmp_path):
    script = render(system_overrides("local", "cluster.device=cpu"), tmp_path / "run").script
    assert "ALLOC_CONF" not in script


# ------------------------------------------------------------------------------------------ recipes
def _recipes():
    import yaml
    from launch_support import REPO
    for path in sorted((REPO / "configs" / "experiment").glob("*_*b.yaml")):
        yield path.stem, yaml.safe_load(path.read_text())


def test_recipes_compile_and_their_pipelines_have_a_small_bubble():
    """Recipes come from the planner (scripts/plan_recipes.py); whatever pipeline it picks idles < 10%."""
    from eurotron.plan.throughput import bubble_fraction

    for name, recipe in _recipes():
        par, data = recipe["parallel"], recipe["data"]
        # DeepSpeed's ZeRO hooks are not verified under compile (validation refuses it there).
        assert par["compile"] is (par.get("dp_engine", "fsdp") != "deepspeed"), name
        if par["pp"] == 1:
            continue
        dp = par["dp_shard"] * par["dp_replicate"]
        n_micro = data["global_batch_size"] // (data["micro_batch_size"] * dp)
        bubble = bubble_fraction(par["pp_schedule"], par["pp"], par.get("pp_virtual_stages", 1), n_micro)
        assert bubble < 0.10, (name, bubble)
    lumi = dict(_recipes())["lumi_llama3_70b"]["parallel"]
    assert lumi["tp"] <= 2  # TP never crosses one MI250X (its two GCDs)
