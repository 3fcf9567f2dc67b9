"""Predicted step time, tokens/s/GPU and MFU of a layout on a cluster (torch-free).

One step of one GPU is modelled as four parts, each from the config alone:

* **compute**: the FLOPs this GPU executes (model FLOPs per token, ``plan/flops.py``, with causal
  attention at half the convention's cost because flash/cuDNN/flex kernels skip the masked half, plus
  what activation checkpointing recomputes) at the GPU model's achievable fraction of its bf16 peak
  (``plan/gpus.py``, calibrated on published runs; eager blocks run at ``EAGER_SLOWDOWN`` of compiled
  ones, torchtitan's measured ratio);
* **TP/SP collectives**: per block and micro-batch, forward and backward, 4 all-gathers/reduce-scatters
  (SP) or 2 all-reduces (same bytes) of the block's activations each way, not overlapped (eurotron has
  no async TP); over the intra-node bandwidth while TP fits in a node;
* **the pipeline bubble** of the schedule (``bubble_fraction``) and the fill/drain sends between stages;
* **data-parallel collectives** not hidden behind compute: FSDP2's parameter all-gathers (bf16) and
  gradient reduce-scatters (fp32), once per step under PP (the stage stays gathered) or with
  ``fsdp_grad_sync=last``, per micro-batch otherwise; DDP's all-reduce. They overlap with compute except
  the first and last unit's share and whatever exceeds the compute time.

MFU is reported in the convention of ``train/mfu.py`` (model FLOPs, non-causal attention, no recompute)
so a prediction and a run's logged MFU compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import ClusterConfig, DataConfig, ModelConfig, ParallelConfig
from .flops import matmul_parameters, model_flops_per_token
from .gpus import GpuSpec, match_gpu
from .layout import schedule

# Compiled blocks over eager ones: torchtitan, Llama-3.1-8B on 8x H100, 6,667 / 5,762 tokens/s/GPU.
EAGER_SLOWDOWN = 5762 / 6667
# selective_op recomputes no matmul, only norms/RoPE/elementwise ops: memory-bound, a few % of a step.
SELECTIVE_OP_OVERHEAD = 0.03
BF16_BYTES, FP32_BYTES = 2, 4


class PlanError(ValueError):
    """The cluster lacks a figure the throughput model needs; the message names the key to set."""


@dataclass(frozen=True)
class StepTime:
    compute_s: float
    tp_comm_s: float
    pp_bubble_s: float
    pp_send_s: float
    dp_exposed_s: float
    tokens_per_step: int
    gpus: int
    model_flops_per_token: float
    peak_flops: float

    @property
    def step_s(self) -> float:
        return self.compute_s + self.tp_comm_s + self.pp_bubble_s + self.pp_send_s + self.dp_exposed_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_step / self.step_s / self.gpus

    @property
    def mfu(self) -> float:
        return self.tokens_per_s_per_gpu * self.model_flops_per_token / self.peak_flops


def bubble_fraction(schedule_name: str, pp: int, stages_per_rank: int, micro_batches: int) -> float:
    """Idle share of a pipeline step: (pp-1)/(n+pp-1) for one stage per rank (GPipe, 1F1B); several
    stages per rank divide the fill by their number; schedules that split the backward fill the rest
    with weight-gradient work, leaving about a third of that (Qi et al. 2023, ZB-H1 ~ 1/3)."""
    if pp <= 1:
        return 0.0
    kind = schedule(schedule_name)
    v = max(stages_per_rank, 1) if kind.multi_stage else 1
    bubble = (pp - 1) / (v * micro_batches + pp - 1)
    return bubble / 3 if kind.split_backward else bubble


def _gpu(cluster: ClusterConfig) -> GpuSpec:
    spec = match_gpu(cluster.gpu_model)
    if spec is None:
        raise PlanError(f"cluster.gpu_model={cluster.gpu_model!r}: not a GPU the planner knows "
                        f"(H100, H200, GH200, A100, MI250X, MI300X); set a known model")
    return spec


def _bandwidth(cluster: ClusterConfig, group_span: int) -> float:
    """Bytes/s per GPU of a collective over ``group_span`` consecutive ranks (inside a node or not)."""
    net = cluster.interconnect
    if 0 < group_span <= net.fast_group_size and net.fast_group_gb_s > 0:
        return net.fast_group_gb_s * 1e9
    inside = group_span <= max(cluster.gpus_per_node, 1)
    value = net.intra_node_gb_s if inside else net.inter_node_gb_s
    key = "intra_node_gb_s" if inside else "inter_node_gb_s"
    if value <= 0:
        raise PlanError(f"cluster.interconnect.{key}={value}: unknown for cluster {cluster.name!r}; set the "
                        f"achievable collective bandwidth per GPU in GB/s (nccl-tests bus bandwidth)")
    return value * 1e9


def _executed_flops_per_token(model: ModelConfig, seq_len: int, par: ParallelConfig) -> float:
    """FLOPs a GPU really runs per token: causal attention at half the convention, plus recompute."""
    attention_convention = 12 * model.num_layers * model.num_heads * model.resolved_head_dim * seq_len
    executed = model_flops_per_token(model, seq_len) - attention_convention / 2
    output = 6 * model.vocab_size * model.hidden_size
    block_forward = (executed - output) / 3  # blocks' forward: a third of their forward + backward
    mode = par.activation_checkpoint
    if mode == "full":
        executed += block_forward
    elif mode == "selective":
        executed += block_forward / max(par.activation_checkpoint_every, 1)
    return executed


def predict_step(model: ModelConfig, par: ParallelConfig, data: DataConfig, cluster: ClusterConfig,
                 micro_batches: int, stages_per_rank: int, compiled: Optional[bool] = None) -> StepTime:
    """Step time of the busiest GPU of ``par`` on ``cluster`` (``micro_batches`` per step per DP rank)."""
    gpu = _gpu(cluster)
    peak = cluster.peak_flops or gpu.bf16_peak_flops
    dp = par.dp_shard * par.dp_replicate
    gpus = par.tp * par.pp * dp
    seq, mbs = data.seq_len, data.micro_batch_size
    tokens_per_step = data.global_batch_size * seq
    tokens_per_replica = tokens_per_step / dp
    compiled = par.compile if compiled is None else compiled

    efficiency = gpu.matmul_efficiency * (1.0 if compiled else EAGER_SLOWDOWN)
    if par.activation_checkpoint == "selective_op":
        efficiency /= 1 + SELECTIVE_OP_OVERHEAD
    flops = tokens_per_replica * _executed_flops_per_token(model, seq, par) / (par.tp * par.pp)
    compute = flops / (peak * efficiency)

    layers_per_rank = model.num_layers / par.pp
    activation_bytes = mbs * seq * model.hidden_size * BF16_BYTES
    tp_comm = 0.0
    if par.tp > 1:
        rounds = 8 + (4 if par.activation_checkpoint == "full" else 0)  # fwd 4, bwd 4, recomputed fwd 4
        per_block = rounds * (par.tp - 1) / par.tp * activation_bytes / _bandwidth(cluster, par.tp)
        tp_comm = per_block * layers_per_rank * micro_batches

    bubble = bubble_fraction(par.pp_schedule, par.pp, stages_per_rank, micro_batches)
    busy = compute + tp_comm
    pp_bubble = busy * bubble / (1 - bubble) if bubble else 0.0
    pp_send = 0.0
    if par.pp > 1:
        # Neighbouring stages are tp*dp ranks apart (pp is the slowest mesh dim): another node once
        # that reaches a node. Only the fill and drain sends are on the critical path.
        send = activation_bytes / (par.tp if par.sequence_parallel else 1)
        neighbours_apart = par.tp * dp
        pp_send = 2 * (par.pp - 1) * send / _bandwidth(cluster, neighbours_apart + 1)

    dp_exposed = _dp_exposed(model, par, cluster, micro_batches, busy)
    return StepTime(compute, tp_comm, pp_bubble, pp_send, dp_exposed, tokens_per_step, gpus,
                    model_flops_per_token(model, seq), peak)


def _dp_exposed(model: ModelConfig, par: ParallelConfig, cluster: ClusterConfig, micro_batches: int,
                busy: float) -> float:
    """Data-parallel communication time not hidden behind the step's compute."""
    params_local = matmul_parameters(model) / (par.tp * par.pp)
    comm = 0.0
    if par.dp_shard > 1:
        shard = (par.dp_shard - 1) / par.dp_shard
        span = par.tp * par.dp_shard  # the dp_shard group: tp-strided ranks inside one dp_replicate slice
        per_pass = params_local * shard / _bandwidth(cluster, span)
        gathers = BF16_BYTES * (1 if par.pp > 1 else 2)  # forward (+ backward re-gather without PP)
        reduce = FP32_BYTES
        repeats = 1 if (par.pp > 1 or par.fsdp_grad_sync == "last") else micro_batches
        comm += per_pass * (gathers + reduce) * repeats
    if par.dp_replicate > 1:
        replicas = (par.dp_replicate - 1) / par.dp_replicate
        span = par.tp * par.dp_shard * par.dp_replicate
        shard_params = params_local / par.dp_shard
        comm += 2 * replicas * shard_params * FP32_BYTES / _bandwidth(cluster, span)
    if comm == 0.0:
        return 0.0
    units = model.num_layers / par.pp + 2  # FSDP units: blocks, embedding, norm+output
    return comm / units + max(0.0, comm - busy)
