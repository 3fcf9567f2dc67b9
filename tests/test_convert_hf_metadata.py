"""Issue 15 items 8-11: what a Hugging Face export writes beyond the weights survives from-hf -> to-hf
losslessly, for published config.json shapes (tiny dimensions, random weights, no tokenizer files):
special token ids (an eos list stays a list), generation_config.json verbatim, the weights' dtype
(fp16 bitwise), and Mistral's sliding window (modelled: logits match transformers beyond the window)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from convert_support import random_eurotron_model, read_safetensors_dir, run_config_yaml, save_eurotron_checkpoint, small_config
from eurotron.convert import ConvertError, convert_from_hf, convert_to_hf
from eurotron.generation import load_model_from_checkpoint
from hf_published import PUBLISHED, hf_model, published_config, write_published_hf_dir

NAMES = list(PUBLISHED)
IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> (HF source dir, from-hf checkpoint dir), made once for the module."""
    root = tmp_path_factory.mktemp("published")
    out = {}
    for seed, name in enumerate(NAMES):
        src = write_published_hf_dir(name, root / name, seed=seed)
        assert not list(src.glob("tokenizer*"))  # item 8: nothing to read the ids from but config.json
        result = convert_from_hf(src, root / f"{name}.ckpt", progress=False)
        assert not result.warnings[1:] and "no tokenizer files" in result.warnings[0]
        out[name] = (src, result.ckpt_dir)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_export_writes_back_what_was_imported(name, imported, tmp_path):
    src, ckpt = imported[name]
    published = published_config(name)
    model_cfg = OmegaConf.load(ckpt / "config.yaml").model
    assert model_cfg.hf.dtype == published["torch_dtype"]
    assert model_cfg.sliding_window == (published.get("sliding_window") or 0)

    out = tmp_path / "hf"
    result = convert_to_hf(ckpt, out, progress=False)  # no --dtype: the source's
    assert result.dtype == {"bfloat16": "bf16", "float16": "fp16"}[published["torch_dtype"]]
    config = json.loads((out / "config.json").read_text())
    for key in IDS:  # item 8 (not null without tokenizer files), item 9 (the list stays a list)
        assert config[key] == published.get(key), key
    assert config["torch_dtype"] == published["torch_dtype"]  # item 10
    assert config.get("sliding_window") == published.get("sliding_window")  # item 11
    # item 9: the source's generation defaults, verbatim
    assert json.loads((out / "generation_config.json").read_text()) == PUBLISHED[name]["generation"]

    # Weights bitwise: bf16 and fp16 sources go through the fp32 checkpoint and back exactly.
    original, again = read_safetensors_dir(src), read_safetensors_dir(out)
    assert sorted(original) == sorted(again)
    for tensor_name, tensor in original.items():
        assert again[tensor_name].dtype == tensor.dtype, tensor_name
        assert again[tensor_name].view(torch.uint8).numpy().tobytes() == tensor.view(torch.uint8).numpy().tobytes()

    # The export reloads in transformers with the source's logits and generation defaults.
    ids = torch.randint(0, 32000, (2, 32), generator=torch.Generator().manual_seed(3))
    theirs, reloaded = hf_model(src), hf_model(out)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, theirs(input_ids=ids).logits)
    assert reloaded.generation_config.eos_token_id == published["eos_token_id"]
    for key in ("do_sample", "temperature", "top_p", "max_length", "pad_token_id"):
        assert getattr(reloaded.generation_config, key) == getattr(theirs.generation_config, key), key


@pytest.mark.parametrize("name", NAMES)
def test_imported_model_computes_transformers_logits(name, imported):
    src, ckpt = imported[name]
    model, _, _ = load_model_from_checkpoint(ckpt)
    ids = torch.randint(0, 32000, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model(ids)
        for attn in ("eager", "sdpa"):
            assert (ours - hf_model(src, attn)(input_ids=ids).logits).abs().max().item() <= 7e-5, attn


def test_mistral_sliding_window_is_modelled_beyond_the_window(imported):
    """Item 11: with window 8 and 32 tokens the window matters, and eurotron attends as transformers does."""
    src, ckpt = imported["Mistral-7B-v0.1"]
    model, _, _ = load_model_from_checkpoint(ckpt)
    assert model.cfg.sliding_window == 8
    ids = torch.randint(0, 32000, (1, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(ids)
        full = hf_model(src, "eager", sliding_window=None)(input_ids=ids).logits  # the old, silent behaviour
        windowed = hf_model(src, "eager")(input_ids=ids).logits
    assert torch.allclose(full[:, :8], windowed[:, :8], atol=1e-6)  # same within the window ...
    assert (full[:, 8:] - windowed[:, 8:]).abs().amax(dim=-1).min() > 1e-3  # ... different beyond it
    assert (ours - windowed).abs().max().item() <= 7e-5


def test_metadata_survives_continued_training(imported, tmp_path):
    """from-hf -> eurotron-train (init_from, the imported model config) -> checkpoint -> to-hf."""
    from eurotron.compose import compose_prepare, compose_train
    from eurotron.data.prepare import prepare
    from eurotron.train.trainer import Trainer
    from eurotron.validation import validate_train_config

    name = "Llama-3.1-8B-Instruct"
    _, ckpt = imported[name]
    data = tmp_path / "data"
    prepare(compose_prepare([f"output_dir={data}", "tokenizer.vocab_size=512"]))
    cfg, yaml_text = compose_train([
        "experiment=demo", "parallel=single", f"hydra.searchpath=[file://{(ckpt / 'configs').resolve()}]",
        "model=llama_3_1_8b_instruct", f"data.path={data}", f"run_dir={tmp_path / 'run'}", "data.seq_len=32",
        "data.global_batch_size=2", "data.micro_batch_size=2", "train.steps=1", "scheduler.warmup_steps=0",
        "eval.every=0", "checkpoint.every=1", "logging.plot_loss_curve=false", "logging.console=false",
        f"train.init_from={ckpt}"])
    validate_train_config(cfg, world_size=1)
    Trainer(cfg, yaml_text).fit()
    out = tmp_path / "hf"
    result = convert_to_hf(tmp_path / "run", out, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert result.dtype == "bf16" and config["torch_dtype"] == "bfloat16"
    assert config["eos_token_id"] == [128001, 128008, 128009] and config["bos_token_id"] == 128000
    assert json.loads((out / "generation_config.json").read_text()) == PUBLISHED[name]["generation"]
    # The run's own tokenizer (512 ids, eos 2) disagrees with the recorded ids: kept, and said so.
    assert any("eos_token_id" in w and "128001" in w for w in result.warnings)


# ------------------------------------------------------------------------------------- item 10: dtypes
def _fp32_checkpoint(tmp_path: Path, scale: float = 1.0, model_out: list | None = None) -> Path:
    cfg = small_config("llama")
    model = random_eurotron_model(cfg, seed=2)
    with torch.no_grad():
        model.layers["1"].feed_forward.w2.weight[3, 5] = 1e5 * scale
    if model_out is not None:
        model_out.append(model)
    return save_eurotron_checkpoint(model, tmp_path / "step", run_config_yaml(cfg), None, {"step": 1, "tokens_seen": 0})


def test_fp16_export_rounds_and_refuses_overflow(tmp_path):
    saved: list = []
    ckpt = _fp32_checkpoint(tmp_path, scale=0.5, model_out=saved)  # 50000: inside fp16's range
    result = convert_to_hf(ckpt, tmp_path / "ok", dtype="fp16", progress=False)
    tensors = read_safetensors_dir(tmp_path / "ok")
    assert result.dtype == "fp16" and all(t.dtype == torch.float16 for t in tensors.values())
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["torch_dtype"] == "float16"
    assert torch.equal(tensors["model.layers.1.mlp.down_proj.weight"],
                       saved[0].layers["1"].feed_forward.w2.weight.half())

    over = _fp32_checkpoint(tmp_path / "over")  # 100000 > 65504
    with pytest.raises(ConvertError) as err:
        convert_to_hf(over, tmp_path / "bad", dtype="fp16", progress=False)
    message = str(err.value)
    assert "model.layers.1.mlp.down_proj.weight (layers.1.feed_forward.w2.weight)" in message
    assert "up to 100000" in message and "±65504" in message and "--dtype bf16 or fp32" in message
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
    convert_to_hf(over, tmp_path / "bf16", dtype="bf16", progress=False)  # bf16 has fp32's range


def test_cli_dtype_choices(tmp_path, capsys):
    from eurotron.cli.convert import main

    ckpt = _fp32_checkpoint(tmp_path, scale=0.01)
    main(["to-hf", str(ckpt), str(tmp_path / "hf"), "--dtype", "fp16", "--no-progress"])
    assert ", fp16, " in capsys.readouterr().out
    main(["to-hf", str(ckpt), str(tmp_path / "hf_default"), "--no-progress"])  # trained here: bf16
    assert json.loads((tmp_path / "hf_default" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_bad_recorded_metadata_is_named(tmp_path):
    ckpt = _fp32_checkpoint(tmp_path, scale=0.01)
    text = (ckpt / "config.yaml").read_text()
    (ckpt / "config.yaml").write_text(text.replace("dtype: null", "dtype: float8"))
    with pytest.raises(ConvertError, match="config.yaml: model.hf.dtype='float8': must be one of bfloat16, float16, float32"):
        convert_to_hf(ckpt, tmp_path / "hf", progress=False)
    (ckpt / "config.yaml").write_text(text.replace("eos_token_id: null", "eos_token_id: end"))
    with pytest.raises(ConvertError, match="model.hf.eos_token_id='end': must be an integer or a list of integers"):
        convert_to_hf(ckpt, tmp_path / "hf", progress=False)


def test_from_hf_refuses_malformed_ids(imported, tmp_path):
    import shutil

    src = shutil.copytree(imported["Llama-2-7b-hf"][0], tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "eos_token_id": "</s>"}))
    with pytest.raises(ConvertError, match=r"eos_token_id='</s>' must be an integer or a list of integers"):
        convert_from_hf(src, tmp_path / "out", progress=False)


def test_init_from_with_another_model_config_notes_what_it_drops():
    import dataclasses

    from eurotron.config import HFExportConfig
    from eurotron.train.init_from import compare_model_configs

    ours = small_config("mistral")  # e.g. a model config without the imported model's window and ids
    theirs = dataclasses.replace(ours, sliding_window=8, hf=HFExportConfig(eos_token_id=[2, 3]))
    notes = compare_model_configs(ours, theirs, "ckpt")
    assert any("model.sliding_window=0 differs from the checkpoint's 8" in n for n in notes)
    assert any(n.startswith("model.hf differs from the checkpoint's") for n in notes)
    assert compare_model_configs(theirs, theirs, "ckpt") == []
