"""Cluster schema (``cluster:``): the system a run is launched on, its Slurm, container, storage and launcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional



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
    # GPUs that share faster links than the rest of the node (LUMI: the two GCDs of one MI250X) and
    # their bandwidth; 0: the whole node is uniform.
    fast_group_size: int = 0
    fast_group_gb_s: float = 0.0


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
    # Host memory of one node, GB; 0: unknown, no check. DeepSpeed's CPU offload must fit it
    # (plan/deepspeed_memory.py), less host_memory_reserve_gb for the OS, loaders and pinned buffers.
    host_memory_gb: float = 0.0
    host_memory_reserve_gb: float = 64.0
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
