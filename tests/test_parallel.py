"""Parallel layout pieces that need no second process: stage split, launch environment, layout
validation before any process group, activation checkpointing / compile equivalence, the layout
report, checkpoint key handling of tied weights, and the 1024-rank scale check on a fake backend."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from eurotron.compose import compose_prepare, compose_train
from eurotron.config import ConfigError, DataConfig, ModelConfig, ParallelConfig, TrainConfig
from eurotron.data.prepare import prepare
from eurotron.model import build_model, count_parameters
from eurotron.parallel.env import ProcessEnv, process_env
from eurotron.parallel.layout import format_layout
from eurotron.parallel.mesh import expand_nodelist, init_distributed, rendezvous_env
from eurotron.parallel.pipeline import build_stage, stage_layer_counts, stage_layer_ranges, stage_to_rank, stages_of_rank
from eurotron.train.checkpoint import _rename_tied
from eurotron.train.metrics import read_metrics
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30


# ------------------------------------------------------------------------------------ stage split
def test_even_split_puts_the_remainder_on_early_stages():
    assert stage_layer_counts(8, 4) == [2, 2, 2, 2]
    assert stage_layer_counts(10, 4) == [3, 3, 2, 2]
    assert stage_layer_counts(80, 8) == [10] * 8
    assert [list(r) for r in stage_layer_ranges(5, 2)] == [[0, 1, 2], [3, 4]]


def test_explicit_split_is_used_and_checked():
    assert [list(r) for r in stage_layer_ranges(6, 3, [1, 3, 2])] == [[0], [1, 2, 3], [4, 5]]
    with pytest.raises(ValueError, match="summing to 6"):
        stage_layer_counts(6, 3, [1, 1, 1])
    with pytest.raises(ValueError, match="at least as many layers"):
        stage_layer_counts(3, 4)


def test_stage_placement_loop_and_v():
    # Loop: stage s on rank s % pp (GPipe, 1F1B, interleaved).
    assert [stage_to_rank(s, 4, "interleaved_1f1b") for s in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    # V: rank r holds stages r and 2*pp-1-r, so the first and last stage share rank 0.
    assert [stage_to_rank(s, 4, "zbv_zero_bubble") for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    par = ParallelConfig(pp=2, pp_virtual_stages=2, pp_schedule="dualpipev")
    assert stages_of_rank(0, par) == [0, 3] and stages_of_rank(1, par) == [1, 2]


def test_a_stage_keeps_the_whole_models_names():
    cfg = ModelConfig(vocab_size=64, hidden_size=16, num_layers=4, num_heads=2, num_kv_heads=1,
                      ffn_hidden_size=32, max_seq_len=16, tie_embeddings=True)
    ranges = stage_layer_ranges(4, 2)
    first, last = build_stage(cfg, 0, ranges), build_stage(cfg, 1, ranges)
    whole = dict(build_model(cfg).named_parameters(remove_duplicate=False))
    names0, names1 = dict(first.named_parameters()), dict(last.named_parameters())
    assert set(names0) | set(names1) == set(whole)
    assert "tok_embeddings.weight" in names0 and "output.weight" in names1 and "norm.weight" in names1
    assert {n.split(".")[1] for n in names1 if n.startswith("layers.")} == {"2", "3"}


def test_tied_optimizer_state_is_keyed_by_the_embedding():
    """A last stage's copy of a tied weight saves and loads its AdamW state as tok_embeddings.weight."""
    cfg = ModelConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                      ffn_hidden_size=32, max_seq_len=16, tie_embeddings=True)
    last = build_stage(cfg, 1, stage_layer_ranges(2, 2))
    saved = _rename_tied({"state.output.weight.exp_avg": 1, "param_groups.output.weight.lr": 2,
                          "state.norm.weight.exp_avg": 3}, last, to_canonical=True)
    assert saved == {"state.tok_embeddings.weight.exp_avg": 1, "param_groups.tok_embeddings.weight.lr": 2,
                     "state.norm.weight.exp_avg": 3}
    assert _rename_tied(saved, last, to_canonical=False)["state.output.weight.exp_avg"] == 1
    whole = build_model(cfg)  # one shared parameter: its state is already under the embedding's name
    assert _rename_tied(saved, whole, to_canonical=False) == saved


# ------------------------------------------------------------------------------ launch environment
def test_ranks_come_from_slurm_when_torchrun_is_absent(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "nid[007-008]")
    env = process_env()
    assert (env.rank, env.local_rank, env.world_size) == (13, 5, 16)
    rendezvous_env()
    assert os.environ["MASTER_ADDR"] == "nid007" and os.environ["MASTER_PORT"] == str(29500 + 4242)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_env().world_size == 2  # torchrun's variables win


def test_slurm_nodelist_expansion():
    assert expand_nodelist("nid[001-003,007],login1") == ["nid001", "nid002", "nid003", "nid007", "login1"]
    assert expand_nodelist("lrdn[0012-0013]") == ["lrdn0012", "lrdn0013"]
    assert expand_nodelist("node1") == ["node1"]


def _free_port_for_slurm_job() -> int:
    """A free port in the range rendezvous_env derives from SLURM_JOB_ID (29500 + id % 10000)."""
    import socket

    for port in range(29600, 39500, 7):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def test_two_tasks_launched_the_srun_way_train_together(small_data, tmp_path, bin_dir):
    """No torchrun: two tasks that only know SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS and the job's
    node list find each other and train DP2 (FSDP2) to the same losses as one process."""
    port = _free_port_for_slurm_job()
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("SLURM_")}
    base.update(OMP_NUM_THREADS="1", SLURM_NTASKS="2", SLURM_JOB_ID=str(port - 29500), SLURM_JOB_NODELIST="localhost")
    args = ["experiment=demo", f"data.path={small_data}", *SMALL, "train.steps=3", "parallel=dp2_fsdp"]
    tasks = [subprocess.Popen([str(bin_dir / "eurotron-train"), *args, f"run_dir={tmp_path}/srun"],
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [t.communicate(timeout=300)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs
    assert "dp_shard=2" in outputs[0] and "(gloo)" in outputs[0]
    _, single = _train(small_data, tmp_path / "single", "train.steps=3")
    srun = [r["loss"] for r in read_metrics(tmp_path / "srun" / "metrics.jsonl")]
    assert srun == pytest.approx(single, rel=1e-5)


# ------------------------------------------------------------------------------ layout validation
def _cfg(*overrides: str):
    cfg, _ = compose_train(["experiment=demo", "parallel=single", "data.path=/nonexistent", *overrides])
    return cfg


INVALID_LAYOUTS = [
    (["parallel.tp=4", "model.num_kv_heads=2"], "model.num_kv_heads=2"),
    (["parallel.pp=8"], "every stage needs a layer"),
    (["parallel.tp=2", "parallel.dp_shard=2", "parallel.dp_engine=ddp"], "dp_replicate"),
    (["parallel.tp=2", "parallel.dp_replicate=2", "parallel.dp_engine=ddp"], "does not compose with tensor parallel"),
    (["parallel.pp=2", "parallel.dp_replicate=2", "parallel.dp_engine=ddp", "parallel.pp_virtual_stages=2",
      "parallel.pp_schedule=zbv_zero_bubble", "data.global_batch_size=16"], "DDP cannot synchronise"),
    (["parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_len=255"], "data.seq_len=255"),
    (["parallel.pp_virtual_stages=2"], "needs parallel.pp > 1"),
    (["parallel.pp=2", "parallel.pp_virtual_stages=2", "parallel.pp_schedule=dualpipev"], "dualpipev needs"),
    (["parallel.pp=2", "parallel.pp_virtual_stages=2", "parallel.pp_schedule=1f1b"], "one stage per rank"),
    (["parallel.pp=2", "data.micro_batch_size=8"], "fewer than parallel.pp=2"),
    (["cluster.device=cpu", "cluster.backend=nccl"], "needs GPUs"),
]


@pytest.mark.parametrize("overrides,message", INVALID_LAYOUTS)
def test_invalid_layouts_are_refused_with_a_clear_message(overrides, message):
    cfg = _cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=cfg.parallel.world_size)
    assert message in str(err.value), str(err.value)


def test_presets_validate_at_their_world_size():
    for preset in sorted((REPO / "configs" / "parallel").glob("*.yaml")):
        cfg = _cfg(f"parallel={preset.stem}", "model=llama3_8b", "data.seq_len=256",
                   "data.micro_batch_size=1", "data.global_batch_size=1024")
        validate_train_config(cfg, world_size=cfg.parallel.world_size)


def test_a_bad_layout_stops_before_any_process_group_starts(tmp_path, bin_dir):
    """Launched as rank 0 of 2 without a rank 1: if the process group were started it would hang."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29999"}
    started = time.time()
    result = subprocess.run([str(bin_dir / "eurotron-train"), "experiment=demo", "parallel=single", "parallel.tp=4",
                             f"run_dir={tmp_path}/run"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "parallel.tp=4" in result.stderr and "launched" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.time() - started < 100


def test_trainer_refuses_a_layout_the_launch_cannot_hold(tmp_path):
    cfg = _cfg("parallel.tp=2", f"run_dir={tmp_path}")
    with pytest.raises(ConfigError, match="needs pp\\*dp_replicate\\*dp_shard\\*tp=2 processes but 1"):
        Trainer(cfg, "")
    assert not dist.is_initialized()


# ------------------------------------------------------------------ single-process model options
SMALL = ["model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
         "model.num_kv_heads=2", "model.ffn_hidden_size=176", "model.max_seq_len=64", "data.seq_len=32",
         "data.global_batch_size=4", "data.micro_batch_size=2", "scheduler.warmup_steps=1", "optim.lr=1e-2",
         "eval.every=0", "checkpoint.every=0", "checkpoint.save_final=false", "logging.plot_loss_curve=false",
         "logging.console=false"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pdata") / "demo"
    prepare(compose_prepare([f"output_dir={out}", "tokenizer.vocab_size=512"]))
    return out


def _train(data: Path, run_dir: Path, *extra: str):
    cfg, text = compose_train(["experiment=demo", "parallel=single", f"data.path={data}", f"run_dir={run_dir}", *SMALL, *extra])
    validate_train_config(cfg, world_size=1)
    trainer = Trainer(cfg, text)
    trainer.fit()
    return trainer, [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


def test_activation_checkpointing_recomputes_the_same_numbers(small_data, tmp_path):
    _, plain = _train(small_data, tmp_path / "plain", "train.steps=3")
    full, full_losses = _train(small_data, tmp_path / "full", "train.steps=3", "parallel.activation_checkpoint=full")
    sel, sel_losses = _train(small_data, tmp_path / "sel", "train.steps=3",
                             "parallel.activation_checkpoint=selective", "parallel.activation_checkpoint_every=2")
    assert full.parallel.checkpointed == [0, 1] and sel.parallel.checkpointed == [0]
    assert full_losses == pytest.approx(plain, rel=1e-6) and sel_losses == pytest.approx(plain, rel=1e-6)
    # The composable checkpoint API keeps parameter names (checkpoints stay interchangeable).
    assert {n for n, _ in full.model.named_parameters()} == {n for n, _ in build_model(full.cfg.model).named_parameters()}


def test_compiled_blocks_train_like_eager(small_data, tmp_path):
    _, eager = _train(small_data, tmp_path / "eager", "train.steps=2")
    compiled, losses = _train(small_data, tmp_path / "compiled", "train.steps=2", "parallel.compile=true")
    assert losses == pytest.approx(eager, rel=1e-5)
    assert {n for n, _ in compiled.model.named_parameters()} == {n for n, _ in build_model(compiled.cfg.model).named_parameters()}


def test_layout_report_names_stages_and_bytes(small_data, tmp_path, capsys):
    _train(small_data, tmp_path / "r", "train.steps=2")
    out = capsys.readouterr().out
    assert "layout: pp=1 x dp_replicate=1 x dp_shard=1 x tp=1 = 1 rank(s)" in out
    cfg = _cfg("parallel=tp2_pp2_dp2", "data.global_batch_size=16")
    ranges = stage_layer_ranges(cfg.model.num_layers, 2)
    text = format_layout(cfg, ranges, [100] * 4 + [120] * 4, 1000, "gloo", torch.device("cpu"))
    assert "stage 0 on pp rank 0: embedding + layers 0-1" in text
    assert "stage 1 on pp rank 1: layers 2-3 + norm + output" in text
    assert "parameters on pp rank 1: 120 (est. 1.9 KiB" in text
    assert "tp=2 + sequence parallel" in text and "fsdp x2" in text


# ----------------------------------------------------------------------------------- scale check
def _model(name: str) -> ModelConfig:
    raw = OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))


def _preset(name: str) -> ParallelConfig:
    raw = OmegaConf.load(REPO / "configs" / "parallel" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ParallelConfig), raw))


@pytest.mark.parametrize("model,preset,world", [
    ("llama3_8b", "tp4_pp2_dp8", 64),
    ("llama3_70b", "tp8_pp8_dp16", 1024),
    ("apertus_70b", "tp8_pp8_dp16", 1024),
])
def test_scale_check_on_a_fake_process_group(model, preset, world):
    """The real TP/PP/FSDP plans at full scale on the meta device: shards tile every parameter."""
    from eurotron.parallel.scale import scale_check

    model_cfg, par = _model(model), _preset(preset)
    assert par.world_size == world
    data = DataConfig(path="-", seq_len=8192, micro_batch_size=1, global_batch_size=par.dp * par.pp * 2)
    report = scale_check(TrainConfig(model=model_cfg, parallel=par, data=data))
    print("\n" + report.format())
    assert not dist.is_initialized()
    assert report.sharded_total == report.total_params == count_parameters(build_model(model_cfg, "meta"))
    assert len(report.stages) == par.pp and all(len(s.per_rank_params) == world // par.pp for s in report.stages)
    # Every rank holds about 1/world of the model (+ its stage's embedding or output share).
    assert report.max_params_per_rank < 1.25 * report.total_params / world
    # The layout model's peak (weights, grads, AdamW, FSDP's unsharded state, activations of 8k tokens).
    assert 0 < report.estimate.peak.activation_bytes < report.max_bytes_per_rank() < 64 * GiB


def test_collective_timeout_reaches_the_process_group(monkeypatch):
    import datetime

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    cfg = _cfg("cluster.collective_timeout_minutes=90")
    assert init_distributed(ProcessEnv(0, 0, 2), torch.device("cpu"), "gloo", cfg.cluster.collective_timeout_minutes)
    assert seen["timeout"] == datetime.timedelta(minutes=90) and seen["backend"] == "gloo"
