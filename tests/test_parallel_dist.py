"""Multi-process equivalence on CPU/gloo: every layout reproduces the single-process run.

Each test is one torchrun launch (start-up costs ~10 s on 2 cores) that trains several layouts in
sequence, each on a fresh DeviceMesh, with the real Trainer: 6 AdamW steps in fp32 with gradient
clipping and an eval pass every 3 steps. Against the single-process run of the same model variant,
every layout must match the loss of each step within 1e-5 relative (the acceptance bar), the global
gradient norm (a check of the gradients themselves, across TP/PP/DP shards) and the eval loss, and its
final checkpoint, loaded into one process, must hold the same weights. The 8-process test also saves
under TP2 x PP2 x DP2 and resumes that checkpoint under four other layouts and in one process.

The learning rate is moderate on purpose: at 1e-2 the xIELU variant hits a gradient spike by step 4
and even one process with another micro-batch size (only the summation order changes) drifts by
~1e-4 in loss; at 3e-3 that order-only drift stays ~1e-7, so the tolerances test the layouts.

Model variants: "llama" (SwiGLU, untied), "apertus" (xIELU MLP + QK-norm: the replicated scalars and
norm weights that TP applies to local shards), "tied" (tied embeddings: across first and last
pipeline stage under PP). 8 heads / 4 KV heads so that TP4 is a valid layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import torch

from eurotron.compose import compose_prepare, compose_train
from eurotron.data.prepare import prepare
from eurotron.generation import load_model_from_checkpoint
from eurotron.train.metrics import read_metrics
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-3  # the norm is a sum of squares: near a spike it amplifies fp32 noise
WEIGHT_ATOL = 1e-4

MODEL = ["model.vocab_size=512", "model.hidden_size=64", "model.num_layers=4", "model.num_heads=8",
         "model.num_kv_heads=4", "model.ffn_hidden_size=176", "model.max_seq_len=64"]
VARIANTS = {
    "llama": [],
    "apertus": ["model.mlp=xielu", "model.qk_norm=true"],
    "tied": ["model.tie_embeddings=true"],
}


def overrides(data: Path, run_dir: Path, variant: str, *layout: str) -> List[str]:
    return ["experiment=demo", "parallel=single", f"data.path={data}", f"run_dir={run_dir}", "data.seq_len=32",
            "data.global_batch_size=8", "data.micro_batch_size=1", "train.steps=6", "scheduler.warmup_steps=2",
            "optim.lr=3e-3", "checkpoint.every=3", "checkpoint.keep_last=2", "eval.every=3", "eval.batches=1",
            "logging.plot_loss_curve=false", "logging.console=false", *MODEL, *VARIANTS[variant], *layout]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist_data") / "demo"
    prepare(compose_prepare([f"output_dir={out}", "tokenizer.vocab_size=512"]))
    return out


def train_here(overrides_: Sequence[str]) -> None:
    """One process, in this interpreter (the reference, and the single-process resume), on one thread
    like each torchrun rank (the cores are shared); the interpreter's thread count is restored."""
    cfg, text = compose_train(list(overrides_))
    validate_train_config(cfg, world_size=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, text).fit()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for variant in VARIANTS:
        train_here(overrides(data, root / variant, variant))
        runs[variant] = root / variant
    return runs


def launch(nproc: int, runs: List[dict], tmp: Path, env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Run the layouts in one torchrun launch of `nproc` processes; returns seconds per layout."""
    spec, timings = tmp / f"spec_{nproc}.json", tmp / f"timings_{nproc}.json"
    spec.write_text(json.dumps({"runs": runs, "timings": str(timings)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), str(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    result = json.loads(timings.read_text())
    print(f"\n{nproc} processes, seconds per layout: {result}")
    return result


def metrics(run_dir: Path) -> Dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare(run_dir: Path, ref_dir: Path, steps: Sequence[int], weights: bool = True) -> Tuple[List[str], float]:
    """Problems found comparing a run with its reference, and the worst relative loss error."""
    got, want = metrics(run_dir), metrics(ref_dir)
    problems, worst = [], 0.0
    if sorted(got) != list(steps):
        return [f"{run_dir.name}: logged steps {sorted(got)}, expected {list(steps)}"], float("inf")
    for step in steps:
        err = rel(got[step]["loss"], want[step]["loss"])
        worst = max(worst, err)
        if err > LOSS_RTOL:
            problems.append(f"{run_dir.name} step {step}: loss {got[step]['loss']} vs {want[step]['loss']} ({err:.1e})")
        if rel(got[step]["grad_norm"], want[step]["grad_norm"]) > GRAD_NORM_RTOL:
            problems.append(f"{run_dir.name} step {step}: grad_norm {got[step]['grad_norm']} vs {want[step]['grad_norm']}")
        if "eval_loss" in want[step] and rel(got[step].get("eval_loss", float("nan")), want[step]["eval_loss"]) > LOSS_RTOL:
            problems.append(f"{run_dir.name} step {step}: eval_loss {got[step].get('eval_loss')} vs {want[step]['eval_loss']}")
    if weights:
        mine, theirs = (dict(load_model_from_checkpoint(d)[0].named_parameters()) for d in (run_dir, ref_dir))
        assert mine.keys() == theirs.keys()
        for name, p in mine.items():
            diff = (p - theirs[name]).abs().max().item()
            if diff > WEIGHT_ATOL:
                problems.append(f"{run_dir.name}: final {name} differs by {diff:.1e}")
    return problems, worst


def check_layouts(layouts, references, root: Path) -> None:
    problems, summary = [], {}
    for name, variant, _ in layouts:
        found, worst = compare(root / name, references[variant], range(1, 7))
        problems += found
        summary[name] = f"{worst:.1e}"
    print(f"worst relative loss error per layout: {summary}")
    assert not problems, "\n".join(problems)


def runs_for(layouts, data: Path, root: Path) -> List[dict]:
    return [{"name": name, "overrides": overrides(data, root / name, variant, *layout)}
            for name, variant, layout in layouts]


TWO_PROCESSES = [
    ("tp2", "llama", ["parallel=tp2"]),
    ("tp2_sp", "apertus", ["parallel=tp2_sp"]),
    ("pp2_1f1b", "tied", ["parallel=pp2"]),
    ("pp2_gpipe_uneven", "llama", ["parallel=pp2", "parallel.pp_schedule=gpipe", "parallel.pp_layers_per_stage=[1,3]"]),
    ("pp2_interleaved_1f1b", "llama", ["parallel=pp2_interleaved"]),
    ("pp2_looped_bfs", "apertus", ["parallel=pp2_interleaved", "parallel.pp_schedule=looped_bfs"]),
    ("pp2_interleaved_zb", "llama", ["parallel=pp2_interleaved", "parallel.pp_schedule=interleaved_zb"]),
    ("pp2_zbv", "tied", ["parallel=pp2_zbv"]),
    ("pp2_dualpipev", "llama", ["parallel=pp2_zbv", "parallel.pp_schedule=dualpipev"]),
    ("dp2_fsdp", "apertus", ["parallel=dp2_fsdp"]),
    ("dp2_ddp", "llama", ["parallel=dp2_ddp"]),
]


# bf16 compute (FSDP2's bf16 parameters with fp32 gradient reduction; autocast under PP): rounding
# differs from fp32 by design, so these only have to train like the fp32 reference, within 2%.
BF16 = [
    ("dp2_fsdp_bf16", "llama", ["parallel=dp2_fsdp", "train.precision=bf16"]),
    ("pp2_bf16", "llama", ["parallel=pp2", "train.precision=bf16"]),
]


def test_two_process_layouts_match_one_process(data, references, tmp_path):
    """TP2, TP2+SP, PP2 under every schedule (1F1B, GPipe with an explicit split, interleaved 1F1B,
    looped BFS, interleaved zero-bubble, ZBV, DualPipeV), DP2 with FSDP2 and with DDP; and bf16."""
    launch(2, runs_for(TWO_PROCESSES + BF16, data, tmp_path), tmp_path)
    check_layouts(TWO_PROCESSES, references, tmp_path)
    for name, variant, _ in BF16:
        got, want = metrics(tmp_path / name), metrics(references[variant])
        assert sorted(got) == list(range(1, 7))
        for step in got:
            assert rel(got[step]["loss"], want[step]["loss"]) < 0.02, (name, step, got[step]["loss"], want[step]["loss"])


FOUR_PROCESSES = [
    ("hsdp_2x2", "llama", ["parallel=hsdp_2x2"]),
    ("tp2_dp2_full_ac", "apertus", ["parallel=tp2_dp2", "parallel.activation_checkpoint=full"]),
    ("pp2_dp2_selective_ac", "tied", ["parallel.pp=2", "parallel.dp_shard=2", "parallel.activation_checkpoint=selective"]),
    ("pp2_dp2_ddp", "llama", ["parallel.pp=2", "parallel.dp_replicate=2", "parallel.dp_engine=ddp"]),
    ("tp2_pp2_interleaved", "llama", ["parallel=tp2_pp2", "parallel.pp_virtual_stages=2",
                                      "parallel.pp_schedule=interleaved_1f1b"]),
]


def test_four_process_layouts_match_one_process(data, references, tmp_path):
    """HSDP 2x2, TP2 x DP2 (FSDP2 over DTensor TP shards), PP2 x DP2 with tied embeddings (FSDP2) and
    with DDP, TP2 x PP2 with interleaved virtual stages."""
    launch(4, runs_for(FOUR_PROCESSES, data, tmp_path), tmp_path)
    check_layouts(FOUR_PROCESSES, references, tmp_path)


EIGHT_PROCESSES = [
    ("tp2_pp2_dp2", "llama", ["parallel=tp2_pp2_dp2"]),
    ("hsdp_2x2_tp2", "apertus", ["parallel=hsdp_2x2", "parallel.tp=2", "parallel.sequence_parallel=true"]),
    ("tp2_pp2_dp2_tied", "tied", ["parallel=tp2_pp2_dp2"]),
]
# Resumed from tp2_pp2_dp2_tied's step-3 checkpoint.
RESHARDED = [
    ("tp1_pp4_dp2", ["parallel.pp=4", "parallel.dp_shard=2"]),
    ("tp4_pp1_dp2", ["parallel.tp=4", "parallel.dp_shard=2", "parallel.sequence_parallel=true"]),
    ("dp8_fsdp", ["parallel.dp_shard=8"]),
    ("dp8_ddp", ["parallel.dp_replicate=8", "parallel.dp_engine=ddp"]),
]


def test_3d_layout_and_resharded_resume(data, references, tmp_path):
    """TP2 x PP2 x DP2 (and HSDP 2x2 x TP2) on 8 processes match one process; the 3D checkpoint, sharded by 8 ranks,
    resumes under TP1xPP4xDP2, TP4xPP1xDP2, DP8 (FSDP2 and DDP) and in one process, and every
    resumed run continues exactly like the uninterrupted one."""
    base = tmp_path / "tp2_pp2_dp2_tied"
    runs = runs_for(EIGHT_PROCESSES, data, tmp_path)
    for name, layout in RESHARDED:
        runs.append({"name": name, "overrides": overrides(data, tmp_path / name, "tied", *layout),
                     "resume_from": {"run_dir": str(base), "step": 3}})
    launch(8, runs, tmp_path)
    check_layouts(EIGHT_PROCESSES, references, tmp_path)
    assert len(list((base / "checkpoints" / "step_00000003" / "model_optim").glob("*.distcp"))) == 8

    # One process resumes the same checkpoint.
    from dist_worker import copy_checkpoint

    copy_checkpoint(base, 3, tmp_path / "one_process")
    train_here(overrides(data, tmp_path / "one_process", "tied"))

    problems, summary = [], {}
    for name in [n for n, _ in RESHARDED] + ["one_process"]:
        for reference in (base, references["tied"]):  # the uninterrupted 3D run, and one process
            found, worst = compare(tmp_path / name, reference, range(4, 7))
            problems += found
            summary[f"{name} vs {reference.name}"] = f"{worst:.1e}"
    print(f"resumed runs, worst relative loss error: {summary}")
    assert not problems, "\n".join(problems)
