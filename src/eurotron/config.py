"""Structured config schema for every eurotron app, registered in Hydra's ConfigStore.

The dataclasses here are the single source of truth for which keys exist and what type they have:
Hydra composes the YAML tree in ``configs/`` on top of them, so a misspelt key or a wrong type fails
at composition. ``validate_train_config`` then checks what types cannot express (divisibility,
limits, consistency between groups) before any work starts, and names the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError
from omegaconf.nodes import BooleanNode

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names the key, the value and the fix."""


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
class ParallelConfig:
    # Mesh dims, ordered ("pp", "dp_replicate", "dp_shard", "tp") as Megatron orders ranks.
    tp: int = 1
    pp: int = 1
    dp_shard: int = 1
    dp_replicate: int = 1
    sequence_parallel: bool = False
    # Data-parallel engine: fsdp (FSDP2 fully_shard; HSDP when dp_replicate > 1) or ddp.
    dp_engine: str = "fsdp"
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


# ------------------------------------------------------------------------------------------- cluster
@dataclass
class PartitionLimits:
    """What one Slurm partition or QoS admits; eurotron-launch checks a job against it before submitting."""

    # 0: no limit known.
    max_nodes: int = 0
    min_nodes: int = 0
    # Slurm time (D-HH:MM:SS, HH:MM:SS, MM); "": no limit known.
    max_time: str = ""
    # Allocates whole nodes: a job must fill its nodes.
    exclusive: bool = False


@dataclass
class SlurmConfig:
    """#SBATCH settings of a system (configs/cluster/<system>.yaml); values go to the script quoted."""

    account: Optional[str] = None
    # The system charges every job to a project: eurotron-launch refuses to submit without an account.
    account_required: bool = False
    partition: Optional[str] = None
    qos: Optional[str] = None
    # Wall-clock limit of one job (D-HH:MM:SS, HH:MM:SS or minutes).
    time: str = "01:00:00"
    # -C, e.g. Alps' thp_never&nvidia_vboost_enabled or Jean Zay's h100.
    constraint: Optional[str] = None
    reservation: Optional[str] = None
    # How GPUs are asked for: gpus_per_node (--gpus-per-node), gres (--gres=gpu:N),
    # gpus_per_task (--gpus-per-task, what Alps needs so each rank sees its own GPU) or none.
    gpu_request: str = "gpus_per_node"
    # 0: the node's usable cores (cluster.cpus_per_node) divided by the tasks per node.
    cpus_per_task: int = 0
    # srun --cpu-bind value for the training step (LUMI: the per-GCD mask_cpu list); null: Slurm's default.
    cpu_bind: Optional[str] = None
    # --hint, e.g. nomultithread; null: not set.
    hint: Optional[str] = None
    # --mem per node (e.g. 0 = all of it); null: the partition's default.
    mem: Optional[str] = None
    exclusive: bool = False
    # More tasks than CPUs (the single-machine test cluster).
    overcommit: bool = False
    # JSC, MareNostrum 5: srun does not inherit --cpus-per-task, export SRUN_CPUS_PER_TASK.
    export_srun_cpus_per_task: bool = False
    # Further sbatch options, one per entry (e.g. --mail-type=END); each becomes one #SBATCH line.
    extra: List[str] = field(default_factory=list)
    # Limits per partition and per QoS name, checked against slurm.partition / slurm.qos.
    partitions: Dict[str, PartitionLimits] = field(default_factory=dict)
    qos_limits: Dict[str, PartitionLimits] = field(default_factory=dict)
    # The system's MaxArraySize (slurm.conf): array jobs (the staged prepare) get at most this many tasks.
    max_array_size: int = 1000


@dataclass
class ContainerConfig:
    # none | singularity (also Apptainer) | edf (CSCS Container Engine: srun --environment=<EDF>)
    runtime: str = "none"
    # singularity: the .sif; edf: the image (.sqsh or registry reference) of the EDF eurotron writes.
    image: Optional[str] = None
    # Host paths mounted into the container (src[:dst]).
    binds: List[str] = field(default_factory=list)
    # singularity: the command and its flags (--rocm on AMD, --nv on NVIDIA).
    command: str = "singularity"
    flags: List[str] = field(default_factory=list)
    # edf: an existing EDF (name or path) to use instead of the one eurotron writes into the run dir.
    edf: Optional[str] = None
    # edf: annotations of the EDF eurotron writes (hooks such as com.hooks.aws_ofi_nccl.enabled).
    annotations: Dict[str, str] = field(default_factory=dict)
    # edf: working directory inside the container; null: the submit directory.
    workdir: Optional[str] = None


@dataclass
class StorageConfig:
    """Where a system keeps things; recipes interpolate these (e.g. run_dir: ${cluster.storage.checkpoints}/...)."""

    # Prepared token shards.
    data: str = "data"
    # Run directories: checkpoints, logs, metrics.
    checkpoints: str = "runs"
    # HF_HOME (tokenizers, datasets); "": leave unset.
    hf_home: str = ""
    # Node-local directory for compiler and kernel caches (Triton, MIOpen, torch.compile).
    node_local: str = "/tmp"


@dataclass
class LauncherConfig:
    """How the job script starts the ranks (launchers/<template>.sbatch.j2)."""

    # Template name under launchers/; "": cluster.name.
    template: str = ""
    # torchrun: one task per node running torchrun; srun: one task per GPU (RANK from SLURM_PROCID).
    pattern: str = "torchrun"
    # Ranks per node; 0: cluster.gpus_per_node (CPU clusters: every rank on one node).
    ranks_per_node: int = 0
    # Appended to the first node's name for MASTER_ADDR (JSC: "i" selects the InfiniBand address).
    master_addr_suffix: str = ""
    # A fixed MASTER_ADDR instead of the first node's name (the single-node test cluster: 127.0.0.1).
    master_addr: Optional[str] = None
    # MASTER_PORT = port_base + SLURM_JOB_ID % 10000, unique per job on shared nodes.
    port_base: int = 20000
    nccl_debug: str = "WARN"
    # The training command on the compute node; the saved config is passed with --config-file.
    train_command: List[str] = field(default_factory=lambda: ["eurotron-train"])
    # Python environment to activate: a venv directory, "auto" (the one eurotron-launch runs from)
    # or null (the modules or the container provide python).
    venv: Optional[str] = None
    # `module use` paths, then `module load` names, in order.
    module_use: List[str] = field(default_factory=list)
    modules: List[str] = field(default_factory=list)
    module_purge: bool = False
    # Compute nodes without internet: HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, WANDB_MODE=offline.
    offline: bool = False


@dataclass
class InterconnectConfig:
    """Achievable collective bandwidth per GPU (nccl-tests' bus bandwidth, one direction), GB/s; 0: not
    known (eurotron-plan then refuses the cluster). The throughput model (plan/throughput.py) uses it."""
    # Inside a node (NVLink, Infinity Fabric): what TP and intra-node DP collectives see.
    intra_node_gb_s: float = 0.0
    # Between nodes: the node's NICs shared by its GPUs (e.g. 4x 200 Gb/s for 4 GPUs = 25 GB/s).
    inter_node_gb_s: float = 0.0


@dataclass
class BillingConfig:
    """How the centre bills an allocation, for eurotron-plan's cost line."""
    # The unit's name as the centre writes it (node-hours, GPU-hours).
    unit: str = "node-hours"
    # Devices (ranks) one billed unit-hour covers: gpus_per_node for node-hours; 2 on LUMI (a GPU-hour
    # is one MI250X, two GCDs).
    devices_per_unit: int = 0


@dataclass
class ClusterConfig:
    name: str = "local"
    # auto | cpu | cuda
    device: str = "auto"
    # auto picks nccl on GPUs (RCCL on ROCm) and gloo on CPU.
    backend: str = "auto"
    # How long a collective may wait before the process group gives up with an error (a hung rank,
    # a node lost): raise it for slow first steps on big jobs (e.g. compile, checkpoint loads).
    collective_timeout_minutes: float = 30.0
    # Peak dense bf16 FLOP/s of one accelerator (fp32 on CPU), for MFU; null: detected from the device
    # at run time (train/mfu.py: known GPUs' peaks, the CPU default; an unknown GPU reports MFU as null).
    peak_flops: Optional[float] = None
    gpus_per_node: int = 0
    cpu_threads: int = 0
    # Kernels for fp32 matmuls on CPU: onednn (2x MKL's speed on AMD EPYC; model/linear.py; PyTorch's own
    # where a build lacks oneDNN, an error only with cluster.device=cpu) | aten.
    cpu_matmul: str = "onednn"
    # What eurotron-launch needs to know of a Slurm system (configs/cluster/<system>.yaml).
    gpu_model: str = ""
    # Memory of one GPU (one GCD on MI250X), GB; 0: no memory check.
    gpu_memory_gb: float = 0.0
    # Usable CPU cores per node (Slurm's count; LUMI-G: 56 of 64).
    cpus_per_node: int = 0
    # x86_64 | aarch64 (GH200 systems): which wheels and containers fit.
    arch: str = "x86_64"
    # Memory kept free per GPU for the CUDA/ROCm context, NCCL buffers and fragmentation, GB.
    memory_reserve_gb: float = 4.0
    interconnect: InterconnectConfig = field(default_factory=InterconnectConfig)
    # Power of one node training (GPUs, CPUs, memory, NICs), W; 0: unknown (no energy estimate).
    node_power_w: float = 0.0
    billing: BillingConfig = field(default_factory=BillingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # Exported in the job; values may name variables as $VAR or ${VAR} (expanded per task),
    # anything else reaches the program literally.
    env: Dict[str, str] = field(default_factory=dict)


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


# ------------------------------------------------------------------------------------------- prepare
@dataclass
class SourceConfig:
    # jsonl | parquet | hf (a `datasets` name or local path) | demo (the corpus shipped with eurotron)
    type: str = "demo"
    path: Optional[str] = None
    # For type=hf: dataset config name and split.
    name: Optional[str] = None
    split: str = "train"
    text_field: str = "text"


@dataclass
class TokenizerConfig:
    # sentencepiece: train one on the corpus; hf: load an existing Hugging Face tokenizer directory.
    type: str = "sentencepiece"
    path: Optional[str] = None
    vocab_size: int = 8192
    # SentencePiece model type: bpe | unigram.
    model_type: str = "bpe"
    # Cap on characters fed to the trainer, so tokenizer training stays bounded on huge corpora.
    max_training_chars: int = 50_000_000


# Crawlers whose robots.txt groups count as an AI-training opt-out: the list Apertus applied, `*` last.
AI_CRAWLER_AGENTS = (
    "AI2Bot", "Applebot-Extended", "Bytespider", "CCBot", "CCBot/2.0", "CCBot/1.0", "ClaudeBot",
    "cohere-training-data-crawler", "Diffbot", "Meta-ExternalAgent", "Google-Extended", "GPTBot",
    "PanguBot", "FacebookBot", "*",
)


@dataclass
class OptOutConfig:
    # robots.txt: a document is removed when any of `agents` may not fetch its URL.
    robots: bool = True
    agents: List[str] = field(default_factory=lambda: list(AI_CRAWLER_AGENTS))
    # Whether `User-agent: *` groups count: for the agent "*" and for agents without a group of their
    # own (Apertus: yes). false: only groups that name an agent count.
    wildcard_group: bool = True
    # How robots.txt is read: rfc9309 (RFC 9309 exactly, eurotron's matcher) | apertus (Protego's
    # decisions, to re-run Apertus's filtering). The report counts the documents the two decide differently.
    robots_semantics: str = "rfc9309"
    # TDMRep: /.well-known/tdmrep.json, then `tdm-reservation` headers, then HTML <meta>.
    tdmrep: bool = True
    # What a missing, 4xx, 5xx/unreachable or unparsable robots.txt means: apertus (keep the
    # documents), rfc9309 (4xx allows, 5xx/unreachable disallows), strict (remove on any doubt).
    policy: str = "apertus"
    # Per-case overrides of the policy, keep | remove (null: the policy's choice).
    on_missing: Optional[str] = None
    on_4xx: Optional[str] = None
    on_5xx: Optional[str] = None
    on_unparsable: Optional[str] = None
    # A document without a URL, or with one that is not http(s).
    on_bad_url: Optional[str] = None
    # A tdmrep.json that is not a JSON array of rules.
    on_tdmrep_unreadable: Optional[str] = None


@dataclass
class PiiConfig:
    enabled: bool = True
    # email | ipv4 | ipv6 | iban (checksum-validated) | phone → <email-pii>, <ip-pii>, <iban-pii>, <phone-pii>
    kinds: List[str] = field(default_factory=lambda: ["email", "ipv4", "ipv6", "iban", "phone"])


@dataclass
class DedupConfig:
    # Exact: same text after normalisation (case, Unicode form, whitespace).
    exact: bool = True
    # Near: MinHash-LSH over word n-grams; pairs above `threshold` (estimated Jaccard) collide.
    near: bool = True
    threshold: float = 0.8
    # Signature length (one-permutation MinHash bins); LSH bands x rows are chosen from it.
    num_perm: int = 128
    shingle_words: int = 5


@dataclass
class FiltersConfig:
    # The compliance stage of eurotron-prepare: domain lists → opt-out → PII → dedup, with a report.
    enabled: bool = False
    # Opt-out snapshot directory (`eurotron-optout fetch`), or "demo" for the one shipped with eurotron.
    snapshot: Optional[str] = None
    optout: OptOutConfig = field(default_factory=OptOutConfig)
    # Files with one domain per line (# comments); a domain covers its subdomains, the most specific wins.
    block_domains: Optional[str] = None
    # When set, documents from domains not listed here are removed.
    allow_domains: Optional[str] = None
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # Record fields the filters and the report read.
    url_field: str = "url"
    date_field: str = "date"
    lang_field: str = "lang"
    headers_field: str = "headers"
    html_field: str = "html"


@dataclass
class StagedConfig:
    """eurotron-prepare launch=true: the corpus as Slurm jobs (README "Preparing a corpus on a cluster")."""

    # Resolved config, per-task outputs, job scripts and logs; null: <output_dir>.staged next to output_dir.
    work_dir: Optional[str] = None
    # Array tasks that filter (stage 1) and tokenize (stage 3), each a contiguous range of the input files.
    tasks: int = 4
    # Tasks of the dedup decisions (stage 2), each holding the keys whose hash % dedup_tasks is its own.
    dedup_tasks: int = 2
    # At most this many tasks of an array run at once (0: no limit).
    max_parallel: int = 0
    # Per task: cores (stage 1 and 3 run num_workers=cpus_per_task-1 workers), memory (--mem), time limit.
    cpus_per_task: int = 1
    mem_per_task: str = "4G"
    time: str = "02:00:00"
    # null: cluster.slurm.partition (on a GPU system, name its CPU partition here).
    partition: Optional[str] = None


@dataclass
class PrepareConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    output_dir: str = "data/demo"
    # Tokens per shard file before a new one is started.
    shard_tokens: int = 50_000_000
    # Every n-th document goes to the held-out split (0 = no held-out split).
    eval_every_nth_document: int = 20
    overwrite: bool = False
    # Filters and the report (off in the schema; configs/prepare.yaml turns them on).
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    # Worker processes that parse, filter and tokenize (0: everything in this process).
    num_workers: int = 0
    # A malformed record (bad JSON, invalid UTF-8, missing or non-string text): fail (stop, naming
    # its file and line) or skip (count it per kind in the report and go on).
    bad_records: str = "fail"
    # Submit the staged prepare to cluster's Slurm instead of running here (see `staged`).
    launch: bool = False
    staged: StagedConfig = field(default_factory=StagedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass
class SummaryProviderConfig:
    name: str = "[provider name]"
    contact: str = "[contact address]"


@dataclass
class SummaryModelConfig:
    name: str = "[model name]"
    version: str = "[version]"
    release_date: str = "[date of placement on the EU market]"
    # The model this one was derived from, if any (fine-tuning, continued pre-training).
    base_model: Optional[str] = None
    modalities: List[str] = field(default_factory=lambda: ["text"])


@dataclass
class SummaryConfig:
    # report.json files written by eurotron-prepare, one per prepared source.
    reports: List[str] = field(default_factory=list)
    # Where the Markdown draft goes (null: standard output).
    output: Optional[str] = None
    provider: SummaryProviderConfig = field(default_factory=SummaryProviderConfig)
    model: SummaryModelConfig = field(default_factory=SummaryModelConfig)
    # How many domains the "most relevant domains" list names per source.
    top_domains: int = 10


_REGISTERED = False


def _strict_bool(self: BooleanNode, value: Any) -> bool:
    """OmegaConf reads 2, "2", "yes" and "on" as true; a switch here takes true or false only, so a
    mistyped value (data.shuffle=2) is an error at composition instead of a silent `true`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValidationError(f"Value '{value}' is not a valid bool (type {type(value).__name__}): write true or false")


def strict_booleans() -> None:
    """Make every boolean config node strict (idempotent; applies to all OmegaConf configs of the process)."""
    BooleanNode._validate_and_convert_impl = _strict_bool  # type: ignore[method-assign]
# Nested schemas by class name (fields are annotated as strings under `from __future__ import annotations`).
_SCHEMAS_BY_NAME = {
    cls.__name__: cls
    for cls in (RopeScalingConfig, HFExportConfig, ModelConfig, ParallelConfig, DataConfig, LossConfig, OptimConfig,
                SchedulerConfig, WandbConfig, LoggingConfig, ClusterConfig, CheckpointConfig, EvalConfig,
                PartitionLimits, SlurmConfig, ContainerConfig, StorageConfig, LauncherConfig, LaunchConfig,
                TrainingConfig, GenerateConfig, TrainConfig, SourceConfig, TokenizerConfig, PrepareConfig,
                BlendSourceConfig, OptOutConfig, PiiConfig, DedupConfig, FiltersConfig,
                SummaryProviderConfig, SummaryModelConfig, SummaryConfig)
}


def register_configs() -> None:
    """Register the schemas so YAML files can extend them (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    strict_booleans()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="summary_schema", node=SummaryConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="parallel", name="parallel_schema", node=ParallelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="scheduler", name="scheduler_schema", node=SchedulerConfig)
    cs.store(group="logging", name="logging_schema", node=LoggingConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    _REGISTERED = True


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra's `+key=value` can force a key into a structured node; refuse it instead of dropping it."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{dotted}: no such key; valid keys here: {', '.join(sorted(fields))}")
        child_type = fields[key].type
        child_schema = _SCHEMAS_BY_NAME.get(child_type if isinstance(child_type, str) else getattr(child_type, "__name__", ""))
        child = node._get_node(key)
        if child_schema is not None and isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, child_schema, dotted + ".")


def load_config_file(path: "str | os.PathLike[str]", what: str = "config file") -> DictConfig:
    """Read a saved YAML config (--config-file, a checkpoint's config.yaml): a missing file, broken YAML
    or a file that is not a mapping is one ConfigError naming the file, never a parser traceback."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} {file} does not exist (or is not a file)")
    try:
        loaded = OmegaConf.load(file)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {file} is not valid YAML{where}: {problem}; fix or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {file} cannot be read: {err}") from None
    except Exception as err:  # omegaconf rejects some valid YAML (e.g. non-string keys)
        raise ConfigError(f"{what} {file} is not a valid config: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{what} {file} holds a YAML list, not a mapping of config keys; "
                          f"pass a config.yaml written by eurotron (e.g. <run_dir>/config.yaml)")
    return loaded


def to_object(cfg: DictConfig | Any, schema: type = TrainConfig) -> Any:
    """Turn a composed DictConfig into typed dataclasses (merging onto the schema first)."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, DictConfig):
        _reject_unknown_keys(cfg, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required but not set; pass {err.full_key}=<value>") from None
    except OmegaConfBaseException as err:  # a saved file bypasses Hydra's checks: wrong types, bad interpolations
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {message}" if key else message) from None
