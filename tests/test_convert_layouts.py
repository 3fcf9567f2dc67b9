"""to-hf reads a checkpoint written by 8 ranks (TP2 × PP2 × DP2 shards) into the same bytes as a
single-process checkpoint of the same weights."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert_support import random_eurotron_model, run_config_yaml, save_eurotron_checkpoint, small_config
from eurotron.convert import convert_to_hf
from eurotron.convert.dcp_reader import DCPTensorReader

TESTS = Path(__file__).resolve().parent
FAMILY, SEED = "apertus", 5


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "step_00000001"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8",
           str(TESTS / "convert_layout_worker.py"), str(out), FAMILY, str(SEED)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def test_to_hf_of_a_3d_sharded_checkpoint_equals_single_process(sharded_checkpoint, tmp_path):
    reader = DCPTensorReader(sharded_checkpoint / "model_optim")
    assert reader.num_chunks("layers.0.attention.wq.weight") == 4  # really sharded, not one rank's copy
    assert reader.num_chunks("layers.1.attention.wo.weight") == 4
    assert len(list((sharded_checkpoint / "model_optim").glob("*.distcp"))) > 1

    cfg = small_config(FAMILY)
    single = save_eurotron_checkpoint(random_eurotron_model(cfg, seed=SEED), tmp_path / "single" / "step_00000001",
                                      run_config_yaml(cfg), None, {"step": 1, "tokens_seen": 0})
    for dtype in ("fp32", "bf16"):
        convert_to_hf(single, tmp_path / f"single_{dtype}", dtype=dtype, max_shard_size=60_000, progress=False)
        convert_to_hf(sharded_checkpoint, tmp_path / f"sharded_{dtype}", dtype=dtype, max_shard_size=60_000,
                      progress=False)
        # README.md names the source checkpoint; everything else must be byte for byte the same.
        for out in (tmp_path / f"single_{dtype}", tmp_path / f"sharded_{dtype}"):
            (out / "README.md").unlink()
        _same_files(tmp_path / f"single_{dtype}", tmp_path / f"sharded_{dtype}")
