"""Activation bytes of one transformer block, per ``activation_checkpoint`` mode (torch-free).

Counted from what autograd keeps in eurotron's block (model/, parallel/tensor.py, parallel/activation.py)
for ``tokens`` tokens of one micro-batch, TP degree ``t``, and ``sp = t`` under sequence parallelism
(else 1), in bf16 unless noted. Without checkpointing a block keeps, per token:

* each RMSNorm (bf16 path): its fp32 input copy and the bf16 normalised value, ``6h / sp``, twice;
* the gathered inputs of the attention and MLP projections, ``2h`` each (never split: SP gathers them);
* SDPA's inputs after RoPE and its output (q, k, v, out: ``2(2q + 2kv) / t``; flash-style kernels keep
  no scores) and the copy the output projection reads (``2q / t``);
* the MLP's intermediates: SwiGLU gate, up, activation, product ``8f / t``; xIELU (eager,
  model/activations.py) its input, ``alpha_p x``, ``expm1``, ``expm1 - x``, its output and two boolean
  masks, ``12f / t`` (QK-norm adds its norms' ``6(q + kv) / t``).

``full`` keeps only each block's input (``2h / sp``) and recomputes the rest in backward; ``selective``
does so for every ``activation_checkpoint_every``-th block (``parallel/activation.checkpointed_layers``);
``selective_op`` keeps the block input, the outputs of the matmuls, attention kernels and TP
collectives (``parallel/activation.SAVED_OPS``) and recomputes norms, RoPE and elementwise ops.
"""

from __future__ import annotations

from ..config import ModelConfig, ParallelConfig
from .layout import COMPUTE_BYTES

FP32 = 4
XIELU_BYTES = 5 * COMPUTE_BYTES + 2   # five bf16 intermediates and two boolean masks per element


def _dims(m: ModelConfig, par: ParallelConfig):
    t = par.tp
    sp = t if par.sequence_parallel and t > 1 else 1
    hd = m.resolved_head_dim
    return m.hidden_size, m.num_heads * hd, m.num_kv_heads * hd, m.ffn_hidden_size, t, sp


def block_activation_bytes(m: ModelConfig, par: ParallelConfig, tokens: int, mode: str) -> float:
    """Bytes one block keeps for backward under ``mode`` (none | full | selective_op | boundary)."""
    h, q, kv, f, t, sp = _dims(m, par)
    block_input = COMPUTE_BYTES * h / sp
    if mode in ("full", "boundary"):  # boundary: a stage's input or output hidden states
        per_token = block_input
    elif mode == "none":
        norms = 2 * (FP32 + COMPUTE_BYTES) * h / sp
        gathered = 2 * COMPUTE_BYTES * h
        attention = COMPUTE_BYTES * (2 * q + 2 * kv + q) / t
        mlp = (4 * COMPUTE_BYTES if m.mlp == "swiglu" else XIELU_BYTES) * f / t
        qk_norm = (FP32 + COMPUTE_BYTES) * (q + kv) / t if m.qk_norm else 0
        per_token = norms + gathered + attention + mlp + qk_norm
    elif mode == "selective_op":
        gathered = 2 * COMPUTE_BYTES * h
        projections = COMPUTE_BYTES * (q + 2 * kv) / t
        attention_out = COMPUTE_BYTES * q / t
        # wo and w2: the matmul's full-sequence partial sum and its reduce-scattered (or reduced) result
        row_parallel = 2 * COMPUTE_BYTES * (h + h / sp) if t > 1 else 2 * COMPUTE_BYTES * h
        mlp = (2 if m.mlp == "swiglu" else 1) * COMPUTE_BYTES * f / t
        per_token = block_input + gathered + projections + attention_out + row_parallel + mlp
    else:
        raise ValueError(f"unknown activation mode {mode!r}")
    return tokens * per_token


def is_checkpointed(par: ParallelConfig, layer_id: int) -> bool:
    """Whether block ``layer_id`` runs under torch.utils.checkpoint (parallel/activation.checkpointed_layers)."""
    mode = par.activation_checkpoint
    every = max(par.activation_checkpoint_every, 1)
    return mode in ("full", "selective_op") or (mode == "selective" and layer_id % every == 0)


def kept_block_bytes(m: ModelConfig, par: ParallelConfig, tokens: int, layer_id: int) -> float:
    """Bytes block ``layer_id`` keeps per micro-batch in flight under ``parallel.activation_checkpoint``."""
    mode = par.activation_checkpoint
    if mode == "selective":
        mode = "full" if is_checkpointed(par, layer_id) else "none"
    return block_activation_bytes(m, par, tokens, mode)


def block_working_bytes(m: ModelConfig, par: ParallelConfig, tokens: int) -> float:
    """One block's backward on top of what is kept: under checkpointing its recomputed activations; and
    the gradients flowing through it (the gathered-input and MLP-intermediate gradients, fp32 norm grads)."""
    h, q, kv, f, t, sp = _dims(m, par)
    recomputed = block_activation_bytes(m, par, tokens, "none") if par.activation_checkpoint != "none" else 0
    gradients = tokens * (2 * COMPUTE_BYTES * h + 2 * COMPUTE_BYTES * f / t + FP32 * h / sp)
    return recomputed + gradients


def logits_bytes(m: ModelConfig, par: ParallelConfig, tokens: int, in_flight: int = 1) -> tuple:
    """(kept, backward) bytes of the last stage's logits: the bf16 logits and the fp32 log-softmax the
    loss keeps per micro-batch in flight; the fp32 and bf16 gradients of the one in backward, plus under
    loss_parallel (TP) the fp32 softmax its backward recomputes (vocab-sharded over TP)."""
    elements = tokens * m.vocab_size / par.tp
    backward = FP32 + COMPUTE_BYTES + (FP32 if par.tp > 1 else 0)
    return in_flight * (COMPUTE_BYTES + FP32) * elements, backward * elements
