"""Training schema (``eurotron-train``, ``eurotron-launch``): model, layout, data, loss, optimizer, run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from .cluster import ClusterConfig


# --------------------------------------------------------------------------------------------- model
@dataclass
class RopeScalingConfig:
    # "none" or "llama3" (Llama-3.1 frequency-dependent scaling, also used by Apertus).
    type: str = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class HFExportConfig:
    """What a Hugging Face export writes beyond the architecture. ``eurotron-convert from-hf`` records the
    source's values here so that ``to-hf`` writes them back unchanged, through any training in between
    (the model config travels into every run and checkpoint config). null: not known; to-hf then takes
    the special ids from the checkpoint's tokenizer and exports bf16."""

    bos_token_id: Optional[int] = None
    # An id or a list of ids (Llama-3.1-Instruct ends on any of [128001, 128008, 128009]).
    eos_token_id: Any = None
    pad_token_id: Optional[int] = None
    # float32 | bfloat16 | float16: the dtype the source's weights were published in (to-hf's default).
    dtype: Optional[str] = None
    # The source's generation_config.json (sampling defaults), written back verbatim; null: none.
    generation_config: Optional[Dict[str, Any]] = None


@dataclass
class ModelConfig:
    name: str = "tiny"
    # Hugging Face family the checkpoint maps to: llama | mistral | apertus.
    family: str = "llama"
    vocab_size: int = 8192
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    # None means hidden_size // num_heads.
    head_dim: Optional[int] = None
    ffn_hidden_size: int = 704
    # swiglu: gated SiLU MLP (Llama, Mistral); xielu: ungated MLP with xIELU activation (Apertus).
    mlp: str = "swiglu"
    qk_norm: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    # Longest sequence RoPE is set up for (HF max_position_embeddings).
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    init_std: float = 0.02
    # Packed sequences: attention stays within each document (positions restart per document).
    document_masking: bool = True
    # Attention kernels: auto (FlexAttention for document masking / sliding windows on GPUs, SDPA
    # otherwise; on CPU the dense reference) | sdpa | flex (GPUs only: no FlexAttention backward on CPU).
    attention: str = "auto"
    # Sliding-window attention (Mistral v0.1): a token sees itself and the window-1 tokens before it; 0 = off.
    # A window of data.seq_len or more changes nothing in training but is part of the model (exported).
    sliding_window: int = 0
    # Hugging Face metadata of an imported model (special token ids, dtype, generation defaults).
    hf: HFExportConfig = field(default_factory=HFExportConfig)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads


# ------------------------------------------------------------------------------------------ parallel
@dataclass
class DeepSpeedConfig:
    """parallel.dp_engine=deepspeed: DeepSpeed ZeRO as the data-parallel engine (parallel/deepspeed_config.py
    turns these keys and eurotron's batch, precision and clipping into DeepSpeed's config)."""

    # 1: optimizer states partitioned; 2: + gradients; 3: + parameters.
    zero_stage: int = 2
    # Where optimizer states (and the fp32 master weights) live: none (device) | cpu | nvme (ZeRO-3).
    offload_optimizer: str = "none"
    # ZeRO-3 only: where the partitioned parameters live: none | cpu | nvme.
    offload_params: str = "none"
    # Directory on a node-local NVMe drive, needed by any nvme offload.
    nvme_path: str = ""
    # ZeRO++ (ZeRO-3 only): quantized weight all-gather (qwZ), quantized gradient reduce (qgZ), and
    # hierarchical partitioning (hpZ: a secondary parameter copy partitioned within groups of this size).
    zero_quantized_weights: bool = False
    zero_quantized_gradients: bool = False
    zero_hpz_partition_size: int = 1
    # Elements per communication bucket (DeepSpeed's defaults).
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    # ZeRO-3: elements fetched ahead of use.
    prefetch_bucket_size: int = 50_000_000
    # Overlap gradient reduction with backward (stage 2/3).
    overlap_comm: bool = False
    # Merged into the generated DeepSpeed config; keys eurotron derives itself are refused (validation.py).
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ParallelConfig:
    # Mesh dims, ordered ("pp", "dp_replicate", "dp_shard", "tp") as Megatron orders ranks.
    tp: int = 1
    pp: int = 1
    dp_shard: int = 1
    dp_replicate: int = 1
    sequence_parallel: bool = False
    # Data-parallel engine: fsdp (FSDP2 fully_shard; HSDP when dp_replicate > 1), ddp, or deepspeed
    # (ZeRO 1/2/3 with offload; pp=1, tp=1; parallel.deepspeed.*).
    dp_engine: str = "fsdp"
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    pp_schedule: str = "1f1b"
    pp_virtual_stages: int = 1
    # Explicit layers per (virtual) stage; empty means an even split.
    pp_layers_per_stage: List[int] = field(default_factory=list)
    # none | full | selective (every `activation_checkpoint_every`-th layer) | selective_op (every layer,
    # op level: matmul/attention outputs kept, elementwise/norm ops recomputed).
    activation_checkpoint: str = "none"
    activation_checkpoint_every: int = 2
    compile: bool = False
    # FSDP gradient reduce-scatter under gradient accumulation: every micro-batch (sharded gradients,
    # less memory) or only at the last one (one full unsharded gradient between micro-batches).
    fsdp_grad_sync: str = "micro_batch"
    # Reshard parameters after forward: auto (torchtitan's rule, parallel/data.py) | true | false.
    fsdp_reshard_after_forward: str = "auto"

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard


# ---------------------------------------------------------------------------------------------- data
@dataclass
class BlendSourceConfig:
    # A directory written by eurotron-prepare; every source of a blend uses the same tokenizer.
    path: str = MISSING
    # Relative share of the training samples drawn from this source (normalised over the blend).
    weight: float = 1.0


@dataclass
class DataConfig:
    # Directory written by eurotron-prepare (manifest.json + shards).
    path: str = MISSING
    seq_len: int = 256
    # Sequences per optimizer step, over all data-parallel ranks.
    global_batch_size: int = 8
    # Sequences per forward pass on one rank.
    micro_batch_size: int = 2
    seed: int = 1234
    # Shuffle documents and samples each epoch (off keeps corpus order, for debugging).
    shuffle: bool = True
    # Megatron-style blend: training samples drawn from several prepared datasets by weight,
    # deterministic and resumable (empty: data.path alone). data.path still names the dataset whose
    # tokenizer and eval split the run uses.
    blend: List[BlendSourceConfig] = field(default_factory=list)
    # Hash every shard (sha256) against manifest.json when the dataset opens; a stamp keyed by the
    # files' size and mtime makes later opens skip it. Sizes and token ids are always checked.
    verify_checksums: bool = False


# ---------------------------------------------------------------------------------------------- loss
@dataclass
class LossConfig:
    # standard | goldfish
    name: str = "standard"
    k: int = 50
    h: int = 50
    # hash | static
    strategy: str = "hash"
    start: int = 0


# --------------------------------------------------------------------------------------------- optim
@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    # Clip the global gradient norm to this value; 0 disables clipping.
    grad_clip: float = 1.0
    # auto: fused kernels where the device has them, else foreach.
    implementation: str = "auto"


@dataclass
class SchedulerConfig:
    # cosine (warmup + cosine decay), wsd (warmup-stable-decay), constant (warmup then flat)
    name: str = "cosine"
    warmup_steps: int = 10
    # Final lr as a fraction of optim.lr.
    min_lr_ratio: float = 0.1
    # WSD: fraction of the run spent in the final cooldown.
    decay_fraction: float = 0.2
    # WSD cooldown shape: 1-sqrt (Apertus) or linear.
    decay_shape: str = "1-sqrt"


# ------------------------------------------------------------------------------------------- logging
@dataclass
class WandbConfig:
    # auto: online if WANDB_API_KEY is set, otherwise offline (compute nodes have no internet).
    mode: str = "auto"
    project: str = "eurotron"
    entity: Optional[str] = None


@dataclass
class LoggingConfig:
    log_every: int = 1
    console: bool = True
    wandb: bool = False
    wandb_settings: WandbConfig = field(default_factory=WandbConfig)
    plot_loss_curve: bool = True


# --------------------------------------------------------------------------------------------- train
@dataclass
class CheckpointConfig:
    every: int = 100
    keep_last: int = 3
    # auto: resume from <run_dir>/checkpoints/latest when it exists (verified; a corrupt one falls back to
    # the previous intact one); never: start fresh, refused when run_dir holds checkpoints; restart: move
    # the old run's checkpoints/ and metrics to <run_dir>/previous/<UTC time>/, then start fresh.
    resume: str = "auto"
    save_final: bool = True
    # Write shards in a background thread from a host-memory copy (DCP async_save); the checkpoint is
    # renamed into place and `latest` updated when the write finished (at the next save or at exit).
    async_save: bool = False
    # Every N steps (a multiple of `every`; 0 = off) rank 0 also writes the checkpoint as a Hugging Face
    # directory, <step dir>/hf/, in a background thread once the checkpoint is complete (train/hf_export.py).
    export_hf_every: int = 0
    # Its dtype: bf16 | fp16 | fp32; null: eurotron-convert to-hf's default (an imported model's own, else bf16).
    export_hf_dtype: Optional[str] = None


@dataclass
class EvalConfig:
    every: int = 50
    batches: int = 4


@dataclass
class TrainingConfig:
    steps: int = 100
    seed: int = 42
    # auto: bf16 autocast where the device supports it, fp32 on CPU.
    precision: str = "auto"
    # Float8 training (torchao's convert_to_float8_training on the Linear layers; parallel/float8.py):
    # CUDA GPUs with FP8 tensor cores only (compute capability >= 8.9: H100, GH200); refused elsewhere.
    float8: bool = False
    # Stop after this many steps of this invocation (for tests and preemption drills); 0 = off.
    stop_after: int = 0
    # Start from these model weights (a checkpoint dir, e.g. from `eurotron-convert from-hf`) when the run
    # has no checkpoint to resume; optimizer and schedule start fresh.
    init_from: Optional[str] = None
    # A step whose loss or gradient norm is NaN/Inf: skip (no optimizer/scheduler update, counted in
    # metrics) or stop (exit non-zero naming the step). See train/nonfinite.py.
    nonfinite: str = "skip"
    # Stop (non-zero exit) after this many consecutive skipped steps, even with nonfinite=skip.
    max_nonfinite_steps: int = 10
    # Skip steps whose loss exceeds the mean of the last spike_window applied steps by spike_sigma
    # standard deviations (checked once the window is full); 0 = off.
    spike_sigma: float = 0.0
    spike_window: int = 100
    # Watchdog (train/watchdog.py): a step running longer than this dumps every rank's stacks and exits
    # non-zero. null = auto (30 min for the first steps, then max(10 x median step, 10 min)); 0 = off.
    hang_timeout_s: Optional[float] = None
    # The same for a checkpoint save (the time the loop is blocked); 0 = saves are not watched.
    hang_timeout_save_s: float = 1800.0


@dataclass
class GenerateConfig:
    prompt: str = "Europe"
    max_new_tokens: int = 40
    # greedy | top_p
    strategy: str = "greedy"
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    # > 1 discourages repeating tokens already in the text (transformers' repetition_penalty); 1 = off.
    repetition_penalty: float = 1.0


@dataclass
class LaunchConfig:
    """eurotron-launch: what to do with the rendered job (the system's facts are in `cluster`)."""

    # Print the script and the sbatch commands; write and submit nothing.
    dry_run: bool = False
    # Jobs to submit, each after the previous one ends (afterany); every job resumes from latest.
    chain: int = 1
    # Requeue the job (scontrol requeue) after the checkpoint the time-limit signal triggers;
    # null: yes for a single job, no for a chain (the next job of the chain continues).
    requeue: Optional[bool] = None
    # Signal Slurm sends signal_seconds before the time limit; to the batch shell only (B:) when
    # signal_batch is true, which the script forwards to the trainer.
    signal: str = "USR2"
    signal_seconds: int = 300
    signal_batch: bool = True
    # Submit into a run directory that holds a different config.yaml (a rerun of the same config is
    # always allowed: it resumes).
    force: bool = False
    # Continue the run in run_dir from its latest checkpoint under this config: another system
    # (cluster.*), layout (parallel.*), or the settings a resume may change;
    # launch/moving.py says which keys may differ; run_dir/systems.jsonl records the move.
    continue_run: bool = False


@dataclass
class PlanConfig:
    """eurotron-plan (plan/search.py): what to plan for and how to print it."""
    # The token budget that GPU-hours, node-hours, days and energy are given for.
    tokens: float = 1.0e12
    # Nodes to plan on; null: the nodes of the configured layout (parallel.* world size / gpus_per_node).
    nodes: Optional[int] = None
    # true: evaluate exactly the layout of parallel.* and data.micro_batch_size; false: search all layouts.
    fixed_layout: bool = False
    # text | json ({"layouts": [...]}, best first)
    format: str = "text"
    # Layouts printed in text (json lists every feasible one).
    top: int = 10


@dataclass
class TrainConfig:
    name: str = "run"
    run_dir: str = "runs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
