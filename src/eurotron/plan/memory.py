"""GPU memory per rank of a training layout, from the config alone (no torch model is built).

What one rank holds, for the busiest rank of every pipeline stage:

* **training state**: 16 B per local parameter — fp32 master weight, fp32 gradient and AdamW's two
  fp32 moments (the same rule as the layout report of ``parallel/layout.py``). Linear weights, the
  embedding and the output projection are split over ``tp``; norms are replicated. FSDP/HSDP then
  shards everything over ``dp_shard``; DDP (and ``dp_shard=1``) keeps a full copy per rank.
* **gathered blocks**: the bf16 compute copies of two transformer blocks (the one running and the one
  being prefetched, FSDP; autocast's cast copies without it).
* **activations** saved for backward, bf16, per token and layer (flash/memory-efficient attention, so
  no ``seq x seq`` scores):
  ``4h`` for the residual stream and norm inputs (fp32; split over ``tp`` with sequence parallelism),
  ``2h`` for the inputs of the QKV and MLP projections (gathered, so never split),
  ``q + k + v + attention output`` (split over ``tp``) and the MLP's intermediates
  (SwiGLU: gate, up, activation, product = ``4f``; xIELU: up, activation = ``2f``; split over ``tp``).
  Full activation checkpointing keeps only each layer's input (``2h`` units) plus one layer
  recomputed at a time; ``selective`` checkpoints every ``activation_checkpoint_every``-th layer.
* **in-flight micro-batches**: gradient accumulation holds one; 1F1B holds ``pp - pp_rank`` on a
  pipeline rank (at most the number of micro-batches); GPipe holds all of them; interleaved and
  zero-bubble schedules hold ``1 + (pp - 1) / (pp * v)`` times what 1F1B holds on the first rank.
* **logits**: the last stage's ``micro_batch x seq x vocab / tp`` logits in bf16 plus their fp32
  upcast and gradient (10 B per element), one micro-batch at a time.

It is an estimate for deciding whether a layout can fit (Megatron-LM's and the ZeRO paper's
accounting), not a measurement: allocator fragmentation, NCCL buffers and the CUDA/ROCm context are
what ``cluster.memory_reserve_gb`` keeps free on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..config import ModelConfig, ParallelConfig, TrainConfig
from .deepspeed_memory import deepspeed_memory, host_problem, startup_problem

GiB = 2**30
STATE_BYTES_PER_PARAM = 16      # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
COMPUTE_BYTES = 2               # bf16 compute copies and activations
LOGIT_BYTES = 10                # bf16 logits + fp32 upcast + fp32 gradient, per element
GPIPE_SCHEDULES = ("gpipe",)
ONE_F_ONE_B_SCHEDULES = ("1f1b",)


@dataclass
class RankMemory:
    """One pipeline rank (the busiest of its DP x TP ranks)."""

    pp_rank: int
    layers: int
    params: int                 # local parameter elements after TP and FSDP sharding
    state_bytes: int
    gathered_bytes: int
    activation_bytes: int
    logits_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.gathered_bytes + self.activation_bytes + self.logits_bytes


@dataclass
class MemoryEstimate:
    model: str
    layout: str
    micro_batches: int
    ranks: List[RankMemory] = field(default_factory=list)

    @property
    def peak(self) -> RankMemory:
        return max(self.ranks, key=lambda r: r.total_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.peak.total_bytes

    def fits(self, gpu_memory_gb: float, reserve_gb: float) -> bool:
        return self.peak_bytes + reserve_gb * GiB <= gpu_memory_gb * GiB

    def format(self) -> str:
        lines = [f"memory estimate: {self.model} on {self.layout}, {self.micro_batches} micro-batch(es) per step"]
        for r in self.ranks:
            lines.append(
                f"  pp rank {r.pp_rank}: {r.layers} layers, {r.params:,} params/rank: "
                f"{r.state_bytes / GiB:.1f} GiB weights+grads+AdamW, {r.gathered_bytes / GiB:.1f} GiB gathered blocks, "
                f"{r.activation_bytes / GiB:.1f} GiB activations, {r.logits_bytes / GiB:.1f} GiB logits "
                f"= {r.total_bytes / GiB:.1f} GiB")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ parameters
def layer_params(m: ModelConfig) -> tuple[int, int]:
    """(parameters split over TP, replicated parameters) of one transformer block."""
    h, hd = m.hidden_size, m.resolved_head_dim
    attention = h * hd * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = (3 if m.mlp == "swiglu" else 2) * h * m.ffn_hidden_size
    replicated = 2 * h + (2 * hd if m.qk_norm else 0) + (2 if m.mlp == "xielu" else 0)
    return attention + mlp, replicated


def embedding_params(m: ModelConfig) -> int:
    return m.vocab_size * m.hidden_size


def output_params(m: ModelConfig) -> int:
    """The final norm and, untied, the output projection (tied: counted with the embedding)."""
    return m.hidden_size + (0 if m.tie_embeddings else m.vocab_size * m.hidden_size)


def total_params(m: ModelConfig) -> int:
    split, replicated = layer_params(m)
    return m.num_layers * (split + replicated) + embedding_params(m) + output_params(m)


def _stage_layout(m: ModelConfig, par: ParallelConfig) -> List[tuple[int, bool, bool]]:
    """Per pipeline rank: (layers, holds the embedding, holds the norm + output)."""
    from ..parallel.pipeline import stage_layer_counts, stages_of_rank

    num_stages = par.pp * par.pp_virtual_stages
    counts = stage_layer_counts(m.num_layers, num_stages, par.pp_layers_per_stage)
    out = []
    for pp_rank in range(par.pp):
        stages = stages_of_rank(pp_rank, par)
        out.append((sum(counts[s] for s in stages), 0 in stages, num_stages - 1 in stages))
    return out


# ----------------------------------------------------------------------------------- activations
def activation_bytes_per_layer(m: ModelConfig, par: ParallelConfig, tokens: int) -> int:
    """Bytes one transformer block saves for backward for `tokens` tokens of one micro-batch."""
    h, hd, f = m.hidden_size, m.resolved_head_dim, m.ffn_hidden_size
    tp = par.tp
    residual = 4 * h / (tp if par.sequence_parallel and tp > 1 else 1)
    gathered_inputs = 2 * h
    attention = (m.num_heads * hd * 2 + 2 * m.num_kv_heads * hd) / tp
    mlp = (4 if m.mlp == "swiglu" else 2) * f / tp
    return int(tokens * COMPUTE_BYTES * (residual + gathered_inputs + attention + mlp))


def checkpointed_layer_bytes(m: ModelConfig, par: ParallelConfig, tokens: int) -> int:
    """A checkpointed block keeps only its input (fp32 residual stream)."""
    return int(tokens * COMPUTE_BYTES * 2 * m.hidden_size / (par.tp if par.sequence_parallel and par.tp > 1 else 1))


def micro_batches_in_flight(par: ParallelConfig, pp_rank: int, n_micro: int) -> float:
    if par.pp == 1:
        return 1.0
    if par.pp_schedule in GPIPE_SCHEDULES:
        return float(n_micro)
    in_flight = float(min(par.pp - pp_rank, n_micro))
    if par.pp_schedule not in ONE_F_ONE_B_SCHEDULES:  # interleaved / zero-bubble: a little more
        v = max(par.pp_virtual_stages, 1)
        in_flight = min(in_flight * (1 + (par.pp - 1) / (par.pp * v)), float(n_micro) * v)
    return in_flight


def _activation_bytes(m: ModelConfig, par: ParallelConfig, layers: int, tokens: int, in_flight: float) -> int:
    full = activation_bytes_per_layer(m, par, tokens)
    if par.activation_checkpoint == "full":
        kept = checkpointed_layer_bytes(m, par, tokens)
        return int(in_flight * layers * kept + full)  # + the block being recomputed
    if par.activation_checkpoint == "selective":
        every = max(par.activation_checkpoint_every, 1)
        checkpointed = layers // every
        kept = checkpointed_layer_bytes(m, par, tokens)
        return int(in_flight * ((layers - checkpointed) * full + checkpointed * kept) + (full if checkpointed else 0))
    return int(in_flight * layers * full)


# -------------------------------------------------------------------------------------- estimate
def estimate_memory(cfg: TrainConfig) -> MemoryEstimate:
    """Bytes per rank of `cfg`'s model, layout and batch (see the module docstring for the accounting)."""
    m, par, d = cfg.model, cfg.parallel, cfg.data
    dp = max(par.dp, 1)
    n_micro = max(d.global_batch_size // max(d.micro_batch_size * dp, 1), 1)
    tokens = d.micro_batch_size * d.seq_len
    fsdp_shards = par.dp_shard if par.dp_engine == "fsdp" else 1
    split, replicated = layer_params(m)
    block_compute = 2 * (split // par.tp + replicated) * COMPUTE_BYTES
    layout = f"pp={par.pp} dp_replicate={par.dp_replicate} dp_shard={par.dp_shard} tp={par.tp}"
    est = MemoryEstimate(model=m.name, layout=layout, micro_batches=n_micro)
    for pp_rank, (layers, has_embedding, has_output) in enumerate(_stage_layout(m, par)):
        local = layers * (split / par.tp + replicated)
        if has_embedding:
            local += embedding_params(m) / par.tp
        if has_output:
            local += m.hidden_size + (0 if m.tie_embeddings else m.vocab_size * m.hidden_size / par.tp)
        params = int(-(-local // fsdp_shards))
        in_flight = micro_batches_in_flight(par, pp_rank, n_micro)
        logits = int(tokens * m.vocab_size / par.tp * LOGIT_BYTES) if has_output else 0
        state = params * STATE_BYTES_PER_PARAM
        if par.dp_engine == "deepspeed":  # ZeRO stage and offload decide what stays on the GPU
            state = deepspeed_memory(cfg, params).gpu_state_bytes
        est.ranks.append(RankMemory(
            pp_rank=pp_rank,
            layers=layers,
            params=params,
            state_bytes=state,
            gathered_bytes=block_compute if layers else 0,
            activation_bytes=_activation_bytes(m, par, layers, tokens, in_flight),
            logits_bytes=logits,
        ))
    return est


def fit_problem(cfg: TrainConfig, est: Optional[MemoryEstimate] = None) -> Optional[str]:
    """None when the layout fits cluster.gpu_memory_gb (or no GPU memory is declared), else why not."""
    c = cfg.cluster
    if c.gpu_memory_gb <= 0:
        return None
    est = est or estimate_memory(cfg)
    params = est.ranks[0].params if est.ranks else 0  # DeepSpeed runs pp=1 tp=1: the whole model
    largest = max(embedding_params(cfg.model), sum(layer_params(cfg.model)))
    ds_problem = startup_problem(cfg, params, largest) or host_problem(cfg, params, max(c.gpus_per_node, 1))
    if ds_problem:
        return ds_problem
    if est.fits(c.gpu_memory_gb, c.memory_reserve_gb):
        return None
    peak = est.peak
    return (f"needs about {peak.total_bytes / GiB:.1f} GiB on pp rank {peak.pp_rank} "
            f"({peak.state_bytes / GiB:.1f} weights+grads+AdamW, {peak.activation_bytes / GiB:.1f} activations, "
            f"{(peak.gathered_bytes + peak.logits_bytes) / GiB:.1f} gathered blocks+logits) but a "
            f"{c.gpu_model or 'GPU'} has {c.gpu_memory_gb:g} GiB, {c.memory_reserve_gb:g} GiB of it reserved; "
            f"shard more (parallel.dp_shard, parallel.tp, parallel.pp), set parallel.activation_checkpoint=full "
            f"or lower data.micro_batch_size")
