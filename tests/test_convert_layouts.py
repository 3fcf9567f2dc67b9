"""to-hf of a checkpoint written by 8 ranks (TP2 × PP2 × DP2) gives the same bytes as to-hf of a
single-process checkpoint of the same weights.

One torchrun launch writes two kinds of 8-rank checkpoints (see convert_layout_worker.py): DTensors
saved by DCP directly on a 3D mesh, and the real Trainer under ``parallel=tp2_pp2_dp2`` saving the
weights it loaded through ``train.init_from`` (so ``init_from`` into a 3D layout is checked too).
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert_support import random_eurotron_model, run_config_yaml, save_eurotron_checkpoint, small_config
from eurotron.compose import compose_prepare, compose_train
from eurotron.convert import convert_to_hf
from eurotron.convert.dcp_reader import DCPTensorReader
from eurotron.data.prepare import prepare

TESTS = Path(__file__).resolve().parent
SYNTHETIC_FAMILY, SYNTHETIC_SEED = "apertus", 5
MODEL = ["model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.ffn_hidden_size=96", "model.max_seq_len=64"]
# Trainer variants: Apertus (xIELU scalars and QK-norm replicated under TP), tied embeddings split
# between the first and the last pipeline stage.
VARIANTS = {
    "apertus": ["model.family=apertus", "model.mlp=xielu", "model.qk_norm=true"],
    "tied": ["model.tie_embeddings=true", "model.head_dim=32"],
}


def _overrides(data: Path, run_dir: Path, variant: str, *extra: str):
    return ["experiment=demo", "parallel=single", f"data.path={data}", f"run_dir={run_dir}", "data.seq_len=32",
            "data.global_batch_size=8", "data.micro_batch_size=1", "logging.console=false",
            "logging.plot_loss_curve=false", *MODEL, *VARIANTS[variant], *extra]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Single-process source checkpoints, then one 8-process launch writing their sharded twins."""
    root = tmp_path_factory.mktemp("layouts")
    data = root / "data"
    prepare(compose_prepare([f"output_dir={data}", "tokenizer.vocab_size=512"]))
    sources, runs = {}, []
    for seed, variant in enumerate(VARIANTS):
        cfg, yaml_text = compose_train(_overrides(data, root / f"source_{variant}", variant))
        sources[variant] = save_eurotron_checkpoint(
            random_eurotron_model(cfg.model, seed=seed), root / f"source_{variant}" / "step_00000001", yaml_text,
            data / "tokenizer", {"step": 1, "tokens_seen": 0})
        runs.append({"name": variant, "overrides": _overrides(
            data, root / f"tp2_pp2_dp2_{variant}", variant, "parallel=tp2_pp2_dp2",
            f"train.init_from={sources[variant]}")})
    synthetic = root / "synthetic" / "step_00000001"
    synthetic.mkdir(parents=True)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"synthetic": {"out": str(synthetic), "family": SYNTHETIC_FAMILY,
                                              "seed": SYNTHETIC_SEED}, "runs": runs}))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8",
           str(TESTS / "convert_layout_worker.py"), str(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    sharded = {v: root / f"tp2_pp2_dp2_{v}" / "checkpoints" / "step_00000000" for v in VARIANTS}
    return {"root": root, "synthetic": synthetic, "sources": sources, "sharded": sharded}


def _convert_both(single: Path, sharded: Path, out: Path, dtype: str) -> None:
    """to-hf both; README.md names the source checkpoint, every other file must be byte for byte equal.
    The sharded side is read in blocks of rows smaller than its chunks (block reads across chunks)."""
    for name, ckpt, block_bytes in (("single", single, 1 << 30), ("sharded", sharded, 2048)):
        convert_to_hf(ckpt, out / name, dtype=dtype, max_shard_size=60_000, progress=False, block_bytes=block_bytes)
        (out / name / "README.md").unlink()
    names = sorted(p.name for p in (out / "single").iterdir())
    assert names == sorted(p.name for p in (out / "sharded").iterdir())
    _, mismatch, errors = filecmp.cmpfiles(out / "single", out / "sharded", names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_to_hf_of_a_tp2_pp2_dp2_training_checkpoint_equals_single_process(variant, launched, tmp_path):
    sharded = launched["sharded"][variant]
    assert len(list((sharded / "model_optim").glob("*.distcp"))) == 8  # written by all 8 ranks
    reader = DCPTensorReader(sharded / "model_optim")
    assert reader.num_chunks("layers.0.attention.wq.weight") > 1  # really sharded
    assert json.loads((sharded / "trainer.json").read_text())["layout"]["pp"] == 2
    for dtype in ("fp32", "bf16"):
        _convert_both(launched["sources"][variant], sharded, tmp_path / dtype, dtype)


def test_to_hf_of_dtensors_on_a_3d_mesh_equals_single_process(launched, tmp_path):
    reader = DCPTensorReader(launched["synthetic"] / "model_optim")
    assert reader.num_chunks("layers.0.attention.wq.weight") == 4
    assert reader.num_chunks("layers.1.attention.wo.weight") == 4
    cfg = small_config(SYNTHETIC_FAMILY)
    single = save_eurotron_checkpoint(random_eurotron_model(cfg, seed=SYNTHETIC_SEED), tmp_path / "single" / "step",
                                      run_config_yaml(cfg), None, {"step": 1, "tokens_seen": 0})
    for dtype in ("fp32", "bf16"):
        _convert_both(single, launched["synthetic"], tmp_path / dtype, dtype)
