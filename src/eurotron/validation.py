"""Semantic checks of a composed config, run before any process group or file is touched.

Types and key names are already enforced by the structured schema in ``config.py``; this module
checks what types cannot: divisibility, limits and consistency between groups. Every problem is
reported at once, each line naming the key, its value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from .config import ConfigError, TrainConfig
from .model.linear import CPU_MATMUL_BACKENDS, onednn_available
from .model.masks import ATTENTION_BACKENDS
from .plan.gpus import match_gpu
from .plan.layout import (MULTI_STAGE_SCHEDULES, SCHEDULES, num_stages, sequences_per_micro_step, step_micro_batches,
                          world_size_problem)
from .validation_deepspeed import check_deepspeed

MODEL_FAMILIES = ("llama", "mistral", "apertus")
MLP_KINDS = ("swiglu", "xielu")
ROPE_SCALINGS = ("none", "llama3")
DP_ENGINES = ("fsdp", "ddp", "deepspeed")
AC_MODES = ("none", "full", "selective", "selective_op")
FSDP_GRAD_SYNCS = ("micro_batch", "last")
FSDP_RESHARD_CHOICES = ("auto", "true", "false")
LOSSES = ("standard", "goldfish")
GOLDFISH_STRATEGIES = ("hash", "static")
OPTIMIZERS = ("adamw",)
OPTIM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "single_tensor")
SCHEDULERS = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("1-sqrt", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")
RESUME_MODES = ("auto", "never", "restart")
WANDB_MODES = ("auto", "online", "offline", "disabled")
GENERATION_STRATEGIES = ("greedy", "top_p")
NONFINITE_MODES = ("skip", "stop")
PLAN_FORMATS = ("text", "json")


# Every choice-valued key of the training config and its allowed values, checked in one loop
# (check_choices; launch/validation.py passes its own keys through the same function).
TRAIN_CHOICES: Tuple[Tuple[str, Iterable[str]], ...] = (
    ("model.family", MODEL_FAMILIES),
    ("model.mlp", MLP_KINDS),
    ("model.rope_scaling.type", ROPE_SCALINGS),
    ("model.attention", ATTENTION_BACKENDS),
    ("parallel.dp_engine", DP_ENGINES),
    ("parallel.pp_schedule", SCHEDULES),
    ("parallel.activation_checkpoint", AC_MODES),
    ("parallel.fsdp_grad_sync", FSDP_GRAD_SYNCS),
    ("parallel.fsdp_reshard_after_forward", FSDP_RESHARD_CHOICES),
    ("loss.name", LOSSES),
    ("loss.strategy", GOLDFISH_STRATEGIES),
    ("optim.name", OPTIMIZERS),
    ("optim.implementation", OPTIM_IMPLEMENTATIONS),
    ("scheduler.name", SCHEDULERS),
    ("scheduler.decay_shape", DECAY_SHAPES),
    ("train.precision", PRECISIONS),
    ("checkpoint.resume", RESUME_MODES),
    ("logging.wandb_settings.mode", WANDB_MODES),
    ("cluster.device", DEVICES),
    ("cluster.backend", BACKENDS),
    ("cluster.cpu_matmul", CPU_MATMUL_BACKENDS),
    ("generate.strategy", GENERATION_STRATEGIES),
    ("train.nonfinite", NONFINITE_MODES),
)


def _dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_choices(cfg: Any, p: "_Problems", table: Sequence[Tuple[str, Iterable[str]]]) -> None:
    """Each key of ``table`` holds one of its allowed values. YAML's true/false reach a str field as
    "True"/"False" (fsdp_reshard_after_forward): compared in lower case."""
    for key, allowed in table:
        value = _dotted(cfg, key)
        p.choice(key, str(value).lower() if str(value) in ("True", "False") else value, allowed)


class _Problems:
    """Collects problems so a user fixes all of them in one go."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self.nonfinite: set = set()  # keys already reported as inf/nan: no second line about their range

    def add(self, key: str, value: object, fix: str) -> None:
        if key not in self.nonfinite:
            self.lines.append(f"{key}={value!r}: {fix}")

    def choice(self, key: str, value: str, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        if value not in allowed:
            self.add(key, value, f"must be one of {', '.join(allowed)}")

    def positive(self, key: str, value: float, *, allow_zero: bool = False) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # reported by _check_finite
        ok = value >= 0 if allow_zero else value > 0
        if not ok:
            self.add(key, value, "must be " + ("zero or positive" if allow_zero else "positive"))
        return ok

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("invalid config:\n  " + "\n  ".join(self.lines))


def _check_finite(node: Any, prefix: str, p: _Problems) -> None:
    """Every float of the config is a finite number: inf or nan reaches no optimizer, norm or schedule."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name, p)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _check_finite(item, f"{prefix}[{i}]", p)
    elif isinstance(node, dict):
        for key, item in node.items():
            _check_finite(item, f"{prefix}.{key}", p)
    elif isinstance(node, float) and not math.isfinite(node):
        p.add(prefix, node, "must be a finite number")
        p.nonfinite.add(prefix)


# RoPE base: below 1 the frequencies grow with the channel index; far above the largest published
# long-context bases (~1e10) the lowest frequencies underflow and those channels stop encoding position.
ROPE_THETA_RANGE = (1.0, 1e12)


def _check_model(cfg: TrainConfig, p: _Problems) -> None:
    m = cfg.model
    if m.attention == "flex" and cfg.cluster.device == "cpu":
        p.add("model.attention", "flex", "needs a GPU (torch 2.13 has no FlexAttention backward on CPU); "
              "use model.attention=auto or sdpa with cluster.device=cpu (the dense reference path)")
    # A window of data.seq_len or more is allowed: it changes nothing in training, but it is part of the
    # model (an imported Mistral-7B-v0.1 keeps its 4096 at any seq_len) and is exported to config.json.
    p.positive("model.sliding_window", m.sliding_window, allow_zero=True)
    _check_hf_metadata(m.hf, p)
    sizes_ok = all(
        [
            p.positive("model.vocab_size", m.vocab_size),
            p.positive("model.hidden_size", m.hidden_size),
            p.positive("model.num_layers", m.num_layers),
            p.positive("model.num_heads", m.num_heads),
            p.positive("model.num_kv_heads", m.num_kv_heads),
            p.positive("model.ffn_hidden_size", m.ffn_hidden_size),
            p.positive("model.max_seq_len", m.max_seq_len),
        ]
    )
    if p.positive("model.norm_eps", m.norm_eps) and m.norm_eps >= 0.1:
        p.add("model.norm_eps", m.norm_eps, "must be below 0.1 (RMSNorm's epsilon; Llama uses 1e-5 or 1e-6)")
    if math.isfinite(m.rope_theta) and not ROPE_THETA_RANGE[0] < m.rope_theta <= ROPE_THETA_RANGE[1]:
        p.add("model.rope_theta", m.rope_theta,
              f"must be in ({ROPE_THETA_RANGE[0]:g}, {ROPE_THETA_RANGE[1]:g}] (Llama 2: 10000, Llama 3: 500000)")
    if p.positive("model.init_std", m.init_std) and m.init_std >= 1.0:
        p.add("model.init_std", m.init_std, "must be below 1 (the std of the initial weights; Llama uses 0.02)")
    if not sizes_ok:
        return
    if m.num_heads % m.num_kv_heads:
        p.add("model.num_kv_heads", m.num_kv_heads,
              f"must divide model.num_heads={m.num_heads} so query heads share KV heads evenly "
              f"(divisors: {_divisors(m.num_heads)})")
    if m.head_dim is None and m.hidden_size % m.num_heads:
        p.add("model.hidden_size", m.hidden_size,
              f"must be divisible by model.num_heads={m.num_heads}, or set model.head_dim explicitly")
    head_dim = m.resolved_head_dim
    if head_dim <= 0 or head_dim % 2:
        p.add("model.head_dim", head_dim, "must be a positive even number (RoPE rotates pairs of channels)")
    if m.rope_scaling.type == "llama3":
        rs = m.rope_scaling
        if rs.factor < 1:
            p.add("model.rope_scaling.factor", rs.factor, "must be >= 1")
        if rs.high_freq_factor <= rs.low_freq_factor:
            p.add("model.rope_scaling.high_freq_factor", rs.high_freq_factor,
                  f"must exceed model.rope_scaling.low_freq_factor={rs.low_freq_factor}")
        p.positive("model.rope_scaling.original_max_position_embeddings", rs.original_max_position_embeddings)


def _check_hf_metadata(hf: Any, p: _Problems) -> None:
    """model.hf (written by eurotron-convert from-hf; a user may edit it)."""
    from .convert.hf_metadata import metadata_problems

    p.lines.extend(metadata_problems(hf))


def _check_hf_export(cfg: TrainConfig, p: _Problems) -> None:
    """checkpoint.export_hf_every: exports are made from checkpoints, of a model to-hf can express."""
    from .convert.dtypes import DTYPES
    from .convert.errors import ConvertError
    from .convert.families import family_for_config

    c = cfg.checkpoint
    if c.export_hf_dtype is not None:
        p.choice("checkpoint.export_hf_dtype", c.export_hf_dtype, DTYPES)
    every = c.export_hf_every
    if not p.positive("checkpoint.export_hf_every", every, allow_zero=True) or every == 0:
        return
    if c.every == 0:
        p.add("checkpoint.export_hf_every", every, f"an export is made from a checkpoint and checkpoint.every=0 "
              f"writes none: set checkpoint.every={every} (or a divisor of it), or checkpoint.export_hf_every=0")
    elif every % c.every:
        p.add("checkpoint.export_hf_every", every, f"must be a multiple of checkpoint.every={c.every} (an export is "
              f"made from the checkpoint of its step): use {max(1, every // c.every) * c.every} or "
              f"{(every // c.every + 1) * c.every}")
    try:
        family_for_config(cfg.model)
    except ConvertError as err:
        p.add("checkpoint.export_hf_every", every, f"this model cannot be exported to Hugging Face format ({err}); "
              f"set checkpoint.export_hf_every=0")


def _check_parallel(cfg: TrainConfig, p: _Problems) -> None:
    par, m = cfg.parallel, cfg.model
    dims_ok = all(
        p.positive(f"parallel.{k}", getattr(par, k))
        for k in ("tp", "pp", "dp_shard", "dp_replicate", "pp_virtual_stages", "activation_checkpoint_every")
    )
    if not dims_ok or m.num_heads <= 0 or m.num_kv_heads <= 0:
        return
    for key, value in (("model.num_heads", m.num_heads), ("model.num_kv_heads", m.num_kv_heads),
                       ("model.ffn_hidden_size", m.ffn_hidden_size), ("model.vocab_size", m.vocab_size)):
        if value % par.tp:
            p.add("parallel.tp", par.tp, f"must divide {key}={value} (each TP rank holds an equal share)")
    if par.sequence_parallel and par.tp == 1:
        p.add("parallel.sequence_parallel", True, "needs parallel.tp > 1 (it shards activations over the TP group)")
    if par.dp_engine == "ddp" and par.dp_shard > 1:
        p.add("parallel.dp_shard", par.dp_shard,
              "DDP replicates, it does not shard: use parallel.dp_replicate for DDP or set parallel.dp_engine=fsdp")
    stages = num_stages(par)
    spec = SCHEDULES.get(par.pp_schedule)
    if spec is None:
        return  # reported above
    if par.pp_virtual_stages > 1 and not spec.multi_stage:
        p.add("parallel.pp_schedule", par.pp_schedule,
              f"runs one stage per rank; with parallel.pp_virtual_stages={par.pp_virtual_stages} "
              f"use one of {', '.join(MULTI_STAGE_SCHEDULES)}")
    if spec.stages_per_rank and par.pp > 1 and par.pp_virtual_stages != spec.stages_per_rank:
        p.add("parallel.pp_virtual_stages", par.pp_virtual_stages,
              f"{par.pp_schedule} needs exactly {spec.stages_per_rank} stages per rank")
    if par.pp_layers_per_stage:
        if len(par.pp_layers_per_stage) != stages:
            p.add("parallel.pp_layers_per_stage", list(par.pp_layers_per_stage),
                  f"needs one entry per stage: pp*pp_virtual_stages={stages} entries")
        elif sum(par.pp_layers_per_stage) != m.num_layers or min(par.pp_layers_per_stage) < 1:
            p.add("parallel.pp_layers_per_stage", list(par.pp_layers_per_stage),
                  f"entries must be >= 1 and sum to model.num_layers={m.num_layers}")
    elif m.num_layers > 0 and m.num_layers < stages:
        p.add("parallel.pp", par.pp,
              f"pp*pp_virtual_stages={stages} stages but model.num_layers={m.num_layers}: every stage needs a layer")


def _check_parallel_composition(cfg: TrainConfig, p: _Problems) -> None:
    """How the dimensions compose with each other, the device and the batch (issue 3)."""
    par, d = cfg.parallel, cfg.data
    if min(par.tp, par.pp, par.dp_shard, par.dp_replicate, par.pp_virtual_stages) < 1:
        return  # already reported
    if par.pp == 1 and par.pp_virtual_stages > 1:
        p.add("parallel.pp_virtual_stages", par.pp_virtual_stages, "needs parallel.pp > 1 (stages per pipeline rank)")
    if par.sequence_parallel and par.tp > 1 and d.seq_len > 0 and d.seq_len % par.tp:
        p.add("data.seq_len", d.seq_len,
              f"must be divisible by parallel.tp={par.tp} with sequence parallelism (each TP rank holds a slice)")
    if par.dp_engine == "ddp" and par.dp > 1 and par.tp > 1:
        p.add("parallel.dp_engine", "ddp",
              "does not compose with tensor parallelism (parallel.tp>1); use parallel.dp_engine=fsdp "
              "(parallel.dp_replicate alone gives plain replication, as DDP does)")
    spec = SCHEDULES.get(par.pp_schedule)
    if par.dp_engine == "ddp" and par.dp > 1 and par.pp > 1 and spec is not None and spec.split_backward:
        p.add("parallel.pp_schedule", par.pp_schedule,
              "splits backward into input and weight steps, which DDP cannot synchronise; "
              "use parallel.dp_engine=fsdp or another schedule")
    if cfg.cluster.backend == "nccl" and cfg.cluster.device == "cpu":
        p.add("cluster.backend", "nccl", "needs GPUs; use cluster.backend=gloo (or auto) with cluster.device=cpu")
    if par.pp > 1 and spec is not None and d.micro_batch_size > 0 and d.global_batch_size > 0 \
            and d.global_batch_size % sequences_per_micro_step(d.micro_batch_size, par.dp) == 0:  # else _check_data
        n_micro = step_micro_batches(cfg)
        problem = spec.micro_batch_problem(n_micro, par.pp)
        if problem:
            p.add("data.global_batch_size", d.global_batch_size,
                  f"gives {n_micro} micro-batches per pipeline: {problem}; raise it or lower data.micro_batch_size")


def _check_data(cfg: TrainConfig, p: _Problems) -> None:
    d, par = cfg.data, cfg.parallel
    if not d.path or d.path == "???":
        p.add("data.path", d.path, "set it to a directory written by eurotron-prepare")
    _check_blend(d.blend, p)
    p.positive("data.seed", d.seed, allow_zero=True)
    ok = p.positive("data.seq_len", d.seq_len)
    ok = p.positive("data.global_batch_size", d.global_batch_size) and ok
    ok = p.positive("data.micro_batch_size", d.micro_batch_size) and ok
    if not ok:
        return
    if d.seq_len > cfg.model.max_seq_len > 0:
        p.add("data.seq_len", d.seq_len,
              f"exceeds model.max_seq_len={cfg.model.max_seq_len} (the RoPE limit); lower data.seq_len "
              f"or raise model.max_seq_len")
    dp = max(par.dp, 1)
    per_step = sequences_per_micro_step(d.micro_batch_size, dp)
    if d.global_batch_size % per_step:
        p.add("data.global_batch_size", d.global_batch_size,
              f"must be a multiple of data.micro_batch_size x data-parallel size = {d.micro_batch_size} x {dp} "
              f"= {per_step}")


def _check_blend(blend, p: _Problems) -> None:
    """data.blend: every source names a prepared dataset once, with a positive finite weight."""
    seen = set()
    for i, source in enumerate(blend):
        if not source.path or source.path == "???":
            p.add(f"data.blend[{i}].path", source.path, "set it to a directory written by eurotron-prepare")
        elif source.path in seen:
            p.add(f"data.blend[{i}].path", source.path, "appears twice in data.blend; give it one entry and add up its weights")
        seen.add(source.path)
        if not (source.weight > 0 and source.weight != float("inf")):
            p.add(f"data.blend[{i}].weight", source.weight, "must be a positive, finite number (a relative share)")


def _check_loss_optim_schedule(cfg: TrainConfig, p: _Problems) -> None:
    if cfg.loss.name == "goldfish":
        if cfg.loss.k < 2:
            p.add("loss.k", cfg.loss.k, "must be >= 2 (one token in k is dropped; k=1 would drop every token)")
        if cfg.loss.h < 1:
            p.add("loss.h", cfg.loss.h, "must be >= 1 (the hash window length)")
        if cfg.loss.start < 0:
            p.add("loss.start", cfg.loss.start, "must be >= 0")
        if cfg.loss.strategy == "hash" and cfg.loss.h > cfg.data.seq_len > 0:
            p.add("loss.h", cfg.loss.h,
                  f"exceeds data.seq_len={cfg.data.seq_len}: the first h-1 positions of a row are never dropped, "
                  f"so Goldfish would drop nothing; lower loss.h")
    o = cfg.optim
    p.positive("optim.lr", o.lr)
    p.positive("optim.eps", o.eps)
    p.positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    p.positive("optim.grad_clip", o.grad_clip, allow_zero=True)
    for key, beta in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if not 0.0 <= beta < 1.0:
            p.add(key, beta, "must be in [0, 1)")
    s = cfg.scheduler
    if p.positive("scheduler.warmup_steps", s.warmup_steps, allow_zero=True) and s.warmup_steps >= cfg.train.steps > 0:
        p.add("scheduler.warmup_steps", s.warmup_steps, f"must be smaller than train.steps={cfg.train.steps}")
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        p.add("scheduler.min_lr_ratio", s.min_lr_ratio, "must be in [0, 1] (a fraction of optim.lr)")
    if not 0.0 < s.decay_fraction <= 1.0:
        p.add("scheduler.decay_fraction", s.decay_fraction, "must be in (0, 1] (a fraction of train.steps)")


def _check_run(cfg: TrainConfig, p: _Problems) -> None:
    p.positive("train.steps", cfg.train.steps)
    p.positive("train.seed", cfg.train.seed, allow_zero=True)
    p.positive("train.stop_after", cfg.train.stop_after, allow_zero=True)
    _check_guards(cfg, p)
    p.positive("checkpoint.every", cfg.checkpoint.every, allow_zero=True)
    p.positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    _check_hf_export(cfg, p)
    p.positive("eval.every", cfg.eval.every, allow_zero=True)
    p.positive("eval.batches", cfg.eval.batches)
    p.positive("logging.log_every", cfg.logging.log_every)
    if cfg.cluster.peak_flops is not None:  # null: detected at run time (train/mfu.py)
        p.positive("cluster.peak_flops", cfg.cluster.peak_flops)
    _check_float8(cfg, p)
    p.positive("cluster.cpu_threads", cfg.cluster.cpu_threads, allow_zero=True)
    p.positive("cluster.collective_timeout_minutes", cfg.cluster.collective_timeout_minutes)
    if cfg.cluster.cpu_matmul == "onednn" and cfg.cluster.device == "cpu" and not onednn_available():
        p.add("cluster.cpu_matmul", "onednn", "this PyTorch build has no oneDNN; use cluster.cpu_matmul=aten")
    g = cfg.generate
    p.positive("generate.max_new_tokens", g.max_new_tokens)
    p.positive("generate.temperature", g.temperature)
    p.positive("generate.repetition_penalty", g.repetition_penalty)
    if not 0.0 < g.top_p <= 1.0:
        p.add("generate.top_p", g.top_p, "must be in (0, 1]")
    if not cfg.run_dir:
        p.add("run_dir", cfg.run_dir, "set a directory for checkpoints and metrics")


def _check_float8(cfg: TrainConfig, p: _Problems) -> None:
    """train.float8 where the config already shows the hardware cannot (the device is checked again at start)."""
    if not cfg.train.float8:
        return
    if cfg.cluster.device == "cpu":
        p.add("train.float8", True, "needs a GPU with FP8 tensor cores (H100, GH200); cluster.device=cpu has none: "
              "set train.float8=false")
        return
    spec = match_gpu(cfg.cluster.gpu_model)
    if spec is not None and not spec.float8:
        p.add("train.float8", True, f"needs FP8 tensor cores (H100, GH200); "
              f"cluster.gpu_model={cfg.cluster.gpu_model!r} ({spec.name}) has none: set train.float8=false")


def _check_guards(cfg: TrainConfig, p: _Problems) -> None:
    """The training loop's non-finite guard, loss-spike rule and hang watchdog (train.*)."""
    t = cfg.train
    p.positive("train.max_nonfinite_steps", t.max_nonfinite_steps)
    for key, value in (("train.spike_sigma", t.spike_sigma), ("train.hang_timeout_s", t.hang_timeout_s),
                       ("train.hang_timeout_save_s", t.hang_timeout_save_s)):
        if value is not None:  # hang_timeout_s: null = auto; inf/nan are reported by _check_finite
            p.positive(key, value, allow_zero=True)
    if t.spike_window < 2:
        p.add("train.spike_window", t.spike_window, "must be at least 2 (a standard deviation needs two losses)")


def validate_train_config(cfg: TrainConfig, world_size: Optional[int] = None) -> None:
    """Raise ConfigError listing every problem; `world_size` is checked against the mesh when given."""
    p = _Problems()
    _check_finite(cfg, "", p)
    check_choices(cfg, p, TRAIN_CHOICES)
    _check_model(cfg, p)
    _check_parallel(cfg, p)
    _check_parallel_composition(cfg, p)
    check_deepspeed(cfg, p)
    _check_data(cfg, p)
    _check_loss_optim_schedule(cfg, p)
    _check_run(cfg, p)
    problem = world_size_problem(cfg.parallel, world_size) if world_size is not None else None
    if problem:
        par = cfg.parallel
        p.add("parallel", f"pp={par.pp} dp_replicate={par.dp_replicate} dp_shard={par.dp_shard} tp={par.tp}", problem)
    p.raise_if_any()


def validate_plan_config(cfg: TrainConfig) -> None:
    """eurotron-plan's own keys (plan.*) and the cluster figures every plan needs."""
    p = _Problems()
    plan, c = cfg.plan, cfg.cluster
    _check_finite(plan, "plan", p)
    if p.positive("plan.tokens", plan.tokens) and plan.tokens < 1:
        p.add("plan.tokens", plan.tokens, "must be at least 1 token (e.g. plan.tokens=1e12)")
    if plan.nodes is not None:
        p.positive("plan.nodes", plan.nodes)
    p.positive("plan.top", plan.top)
    check_choices(cfg, p, (("plan.format", PLAN_FORMATS),))
    if c.gpus_per_node <= 0:
        p.add("cluster.gpus_per_node", c.gpus_per_node,
              f"cluster {c.name!r} declares no GPUs: plan for a GPU system (e.g. cluster=alps, cluster=lumi) "
              f"or set cluster.gpus_per_node, cluster.gpu_model and cluster.gpu_memory_gb")
    if match_gpu(c.gpu_model) is None:
        p.add("cluster.gpu_model", c.gpu_model, "is not a GPU the planner knows (H100, H200, GH200, A100, "
                                                 "MI250X, MI300X); set one of them")
    p.raise_if_any()


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
