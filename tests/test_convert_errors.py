"""eurotron-convert refuses what it cannot convert exactly, with one clear message."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from convert_support import random_eurotron_model, random_hf_model, run_config_yaml, save_eurotron_checkpoint, small_config
from eurotron.convert import ConvertError, convert_from_hf, convert_to_hf
from eurotron.convert.safetensors_writer import parse_size


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "llama"
    random_hf_model(small_config("llama")).save_pretrained(out, max_shard_size="60KB")
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    cfg = small_config("llama")
    step = tmp_path_factory.mktemp("run") / "step_00000001"
    return save_eurotron_checkpoint(random_eurotron_model(cfg), step, run_config_yaml(cfg), None,
                                    {"step": 1, "tokens_seen": 8})


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported architecture GPT2LMHeadModel"),
        ({"attention_bias": True}, "attention_bias=true is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "RoPE scaling type 'yarn'"),
        ({"intermediate_size": 128}, "mlp.gate_proj.weight has shape [96, 64], config.json implies [128, 64]"),
        ({"num_key_value_heads": 4}, "k_proj.weight has shape [32, 64], config.json implies [64, 64]"),
        ({"num_hidden_layers": 3}, "missing model.layers.2.self_attn.q_proj.weight"),
        ({"num_hidden_layers": 1}, "unexpected tensor model.layers.1.self_attn.q_proj.weight"),
    ],
    ids=["architecture", "bias", "activation", "rope-type", "ffn-shape", "gqa-shape", "missing", "unexpected"],
)
def test_from_hf_rejects(changes, message, hf_dir, tmp_path):
    broken = _copy(hf_dir, tmp_path / "hf")
    _edit_config(broken, **changes)
    with pytest.raises(ConvertError, match=None) as err:
        convert_from_hf(broken, tmp_path / "out", progress=False)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_from_hf_missing_shard_and_no_weights(hf_dir, tmp_path):
    broken = _copy(hf_dir, tmp_path / "hf")
    shards = sorted(broken.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(ConvertError, match=f"missing 1 of the shards .*{shards[1].name}"):
        convert_from_hf(broken, tmp_path / "out", progress=False)
    for shard in broken.glob("model*"):
        shard.unlink()
    torch.save({}, broken / "pytorch_model.bin")
    with pytest.raises(ConvertError, match="reads safetensors only"):
        convert_from_hf(broken, tmp_path / "out", progress=False)
    with pytest.raises(ConvertError, match="not a local directory and downloading it from the Hugging Face Hub failed"):
        convert_from_hf("no-such-org-eurotron/no-such-model", tmp_path / "out", progress=False)


def test_to_hf_rejects_missing_dcp_shard_and_shape_mismatch(ckpt, tmp_path):
    missing = _copy(ckpt, tmp_path / "missing")
    for data_file in (missing / "model_optim").glob("*.distcp"):
        data_file.unlink()
    with pytest.raises(ConvertError, match=r"is incomplete: __0_0\.distcp is missing"):
        convert_to_hf(missing, tmp_path / "out", progress=False)

    mismatch = _copy(ckpt, tmp_path / "mismatch")
    config = (mismatch / "config.yaml").read_text().replace("ffn_hidden_size: 96", "ffn_hidden_size: 128")
    (mismatch / "config.yaml").write_text(config)
    with pytest.raises(ConvertError, match=r"layers.0.feed_forward.w1.weight has shape \[96, 64\], the config implies \[128, 64\]"):
        convert_to_hf(mismatch, tmp_path / "out", progress=False)

    family = _copy(ckpt, tmp_path / "family")
    (family / "config.yaml").write_text((family / "config.yaml").read_text().replace("family: llama", "family: gpt2"))
    with pytest.raises(ConvertError, match="model.family='gpt2' has no Hugging Face mapping"):
        convert_to_hf(family, tmp_path / "out", progress=False)


def test_output_directory_is_never_clobbered(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match="exists and is not empty"):
        convert_to_hf(ckpt, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    convert_to_hf(ckpt, out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("12345") == 12345
    for bad in ("5XB", "GB", "-1GB"):
        with pytest.raises(ConvertError, match="cannot read the size"):
            parse_size(bad)


def test_cli_prints_one_line_and_exits_2(bin_dir, tmp_path):
    proc = subprocess.run([str(bin_dir / "eurotron-convert"), "to-hf", str(tmp_path / "nothing"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eurotron-convert: error: no eurotron checkpoint at")


def test_safetensors_writer_checks_every_tensor_and_block(tmp_path):
    from eurotron.convert.safetensors_writer import PlannedTensor, write_sharded

    plan = [PlannedTensor("a", (4, 3), torch.float32)]
    with pytest.raises(ConvertError, match=r"a: got \(4, 2\) torch.float32, expected \(4, 3\)"):
        write_sharded(tmp_path, plan, lambda p: torch.zeros(4, 2), 1 << 20)
    with pytest.raises(ConvertError, match="a: got 3 rows, expected 4"):
        write_sharded(tmp_path, plan, lambda p: iter([torch.zeros(2, 3), torch.zeros(1, 3)]), 1 << 20)
    index = write_sharded(tmp_path, plan, lambda p: iter([torch.ones(3, 3), torch.ones(1, 3)]), 1 << 20)
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / index["weight_map"]["a"])["a"], torch.ones(4, 3))
