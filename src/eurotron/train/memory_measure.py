"""Measured peak memory of one training step on one rank, without a GPU (issue 14 point 2).

The rank's real parallelized parts (``parallelize``: the pipeline split, TP/SP plans, activation
checkpointing, FSDP2) are built over torch's fake process group at the layout's full world size, then
materialised as fake tensors (``FakeTensorMode``: shapes, dtypes and storages, no memory) and run
through one training step while PyTorch's own ``MemTracker`` counts every live tensor storage.

What runs is an emulation of one pipeline rank, not ``schedule.step`` (a fake process group cannot
carry the pipeline's point-to-point sends): the rank's stages take their forward and backward steps
in the order that ``plan.layout.schedule_order`` gives for the schedule — the warm-up forwards up to
the in-flight peak, one steady-state backward + forward per local stage (so the unsharded gradients
of every local stage and the in-flight activations coexist, as in the schedule's steady state), the
remaining backwards, FSDP's gradient reduction as ``PipelineStage.perform_reduce_grad`` does it, then
AdamW. A stage's output stays referenced until its backward, as the schedule's ``fwd_cache`` keeps
it. Without PP it runs two micro-batches (one when the step has one) under ``gradient_sync``.

Deviations from a GPU run, all small: attention is the causal SDPA kernel (flash-style: saves q, k,
v, output and log-sum-exp, as FlexAttention and the GPU SDPA kernels do; the CPU dense document mask
is not used); AdamW is the single-tensor implementation (fused AdamW's fake kernel allocates
differently from the CUDA kernel, which allocates nothing); DTensor's sharding propagation runs in the
same fake mode and its global-shaped metadata tensors are not counted (they never exist on a GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor._sharding_prop import ShardingPropagator

from ..config import TrainConfig
from ..parallel.data import gradient_sync
from ..parallel.mesh import build_mesh
from ..parallel.parallelize import ParallelModel, parallelize
from ..parallel.tensor import local_loss, loss_context
from ..plan.layout import schedule_order, step_micro_batches
from ..model.loss import summed_cross_entropy

CPU = torch.device("cpu")


class _StepTracker(MemTracker):
    """MemTracker's storage accounting without its per-module statistics (which refuse a module
    called more than once, and a pipeline stage runs once per micro-batch), and without DTensor's
    sharding-propagation tensors (global-shaped metadata computed in the same fake mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "setup"
        self.phase_peaks: Dict[str, int] = {}
        self._propagating = 0

    def _pre_fw_hook(self, module, inputs) -> None:  # noqa: ANN001 - torch's signature
        pass

    def _post_fw_hook(self, module, inputs, outputs) -> None:  # noqa: ANN001
        pass

    def _pre_bw_hook(self, module, args) -> None:  # noqa: ANN001
        pass

    def _post_bw_hook(self, module, args) -> None:  # noqa: ANN001
        pass

    def _track(self, reftype, t) -> None:  # noqa: ANN001
        if not self._propagating:
            super()._track(reftype, t)

    def _update_peak_stats(self, peak_state) -> None:  # noqa: ANN001
        super()._update_peak_stats(peak_state)
        total = self.current_bytes()
        if total > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = total

    def current_bytes(self) -> int:
        return int(self._curr_mem_snap.get(CPU, {}).get("Total", 0))

    @contextlib.contextmanager
    def skip_propagation(self):
        original = ShardingPropagator._propagate_tensor_meta_non_cached
        tracker = self

        def propagate(prop, op_schema):  # noqa: ANN001
            tracker._propagating += 1
            try:
                return original(prop, op_schema)
            finally:
                tracker._propagating -= 1

        ShardingPropagator._propagate_tensor_meta_non_cached = propagate
        try:
            yield
        finally:
            ShardingPropagator._propagate_tensor_meta_non_cached = original


@dataclass
class MeasuredRank:
    pp_rank: int
    global_rank: int
    peak_bytes: int                          # the step's peak (after setup)
    phase_peaks: Dict[str, int] = field(default_factory=dict)


def measurement_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as measured: causal attention (no CPU dense document mask; see the module docstring) and
    eager blocks (per-block compile fuses elementwise ops, so compiled runs keep at most this much)."""
    model = dataclasses.replace(cfg.model, document_masking=False, sliding_window=0, attention="sdpa")
    return dataclasses.replace(cfg, model=model, parallel=dataclasses.replace(cfg.parallel, compile=False))


def measure_rank(cfg: TrainConfig, pp_rank: int) -> MeasuredRank:
    """Peak bytes of one training step on the first rank (dp 0, tp 0) of pipeline rank ``pp_rank``."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("measure_rank needs to own the (fake) default process group; none may be running")
    cfg = measurement_config(cfg)
    par = cfg.parallel
    rank = pp_rank * (par.world_size // par.pp)
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=par.world_size)
    try:
        pmesh = build_mesh(par, CPU)
        model = parallelize(cfg, pmesh, CPU, seed=0, materialize=False)
        tracker = _StepTracker()
        with FakeTensorMode(allow_non_fake_inputs=True), tracker, tracker.skip_propagation():
            for part in model.parts:
                part.to_empty(device=CPU)
            optimizer = torch.optim.AdamW([p for part in model.parts for p in part.parameters()], lr=1e-4,
                                          foreach=False, fused=False)
            tracker.track_external(*model.parts, optimizer)
            # A short first step (one micro-batch per local stage) creates AdamW's state; then the
            # measured, steady-state step.
            warm_up = [(a, local) for local in range(len(model.parts)) for a in "FB"]
            _run_step(model, cfg, tracker, optimizer, warm_up)
            tracker.phase_peaks = {}
            _run_step(model, cfg, tracker, optimizer, schedule_order(par, step_micro_batches(cfg), pp_rank))
        peak = max(tracker.phase_peaks.values())
        return MeasuredRank(pp_rank, rank, peak, dict(tracker.phase_peaks))
    finally:
        dist.destroy_process_group()


def measure_ranks(cfg: TrainConfig, pp_ranks: List[int]) -> List[MeasuredRank]:
    """``measure_rank`` for each pipeline rank, each in a fresh process: torch keeps per-process state
    about destroyed process groups (a second fake group in one process fails to resolve the first one's
    group names), so one process measures one rank."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = []
    for pp_rank in pp_ranks:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(pool.submit(measure_rank, cfg, pp_rank).result())
    return results


# ------------------------------------------------------------------------------------- the step
def _micro_batch(cfg: TrainConfig) -> Tuple[torch.Tensor, ...]:
    b, length = cfg.data.micro_batch_size, cfg.data.seq_len
    ids = torch.zeros(b, length, dtype=torch.long, device=CPU)
    positions = torch.arange(length, device=CPU).expand(b, length)
    return ids, positions, ids.clone(), torch.ones(b, length, dtype=torch.bool, device=CPU)


def _stage_input(model: ParallelModel, cfg: TrainConfig, stage: int, ids: torch.Tensor) -> torch.Tensor:
    """Token ids on the first stage; elsewhere the received hidden states (sequence-sharded under SP)."""
    if stage == 0:
        return ids
    par = cfg.parallel
    length = cfg.data.seq_len // (par.tp if par.sequence_parallel and par.tp > 1 else 1)
    return torch.empty(cfg.data.micro_batch_size, length, cfg.model.hidden_size, dtype=model.dtype,
                       device=CPU, requires_grad=True)


def _run_step(model: ParallelModel, cfg: TrainConfig, tracker: _StepTracker, optimizer: torch.optim.Optimizer,
              order: List[Tuple[str, int]]) -> None:
    """Forward ("F") and backward ("B") steps of the rank's local stages in ``order``, the gradient
    reduction and AdamW."""
    par = cfg.parallel
    pipelined = par.pp > 1
    last_stage = len(model.layer_ranges) - 1
    in_flight: Dict[int, List[tuple]] = {i: [] for i in range(len(model.parts))}
    backwards_left = {i: sum(1 for a, s in order if a == "B" and s == i) for i in in_flight}
    ids, positions, labels, mask = _micro_batch(cfg)
    for action, local in order:
        part, stage = model.parts[local], model.stage_ids[local]
        if action == "F":
            tracker.phase = "forward"
            with loss_context(model.tp_enabled), model.compute_context():
                out = part(_stage_input(model, cfg, stage, ids), positions)
                loss = local_loss(summed_cross_entropy(out, labels, mask)) if stage == last_stage else None
            in_flight[local].append((out, loss))
            continue
        tracker.phase = "backward"
        out, loss = in_flight[local].pop(0)
        backwards_left[local] -= 1
        last = backwards_left[local] == 0
        with _grad_sync(part, pipelined, last, par.fsdp_grad_sync), loss_context(model.tp_enabled):
            if loss is not None:
                loss.backward()
            else:
                out.backward(torch.ones_like(out))
        del out, loss
    if pipelined:
        tracker.phase = "reduce"
        for part in model.parts:
            _reduce_like_pipeline_stage(part)
    tracker.phase = "optimizer"
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _grad_sync(part: torch.nn.Module, pipelined: bool, last: bool, fsdp_grad_sync: str):
    """The FSDP flags a backward runs under: the pipeline stage's, or the trainer's (parallelize.py)."""
    if not pipelined:
        return gradient_sync(part, last, fsdp_grad_sync)
    if isinstance(part, FSDPModule):  # PipelineStage.backward_maybe_with_nosync
        part.set_is_last_backward(False)
        part.set_reshard_after_backward(False)
        part.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


def _reduce_like_pipeline_stage(part: torch.nn.Module) -> None:
    """What ``PipelineStage.perform_reduce_grad`` does after a schedule's last backward."""
    if not isinstance(part, FSDPModule):
        return
    part.set_is_last_backward(True)
    part.set_reshard_after_backward(True)
    part.set_requires_gradient_sync(True)
    state = fully_shard.state(part)
    for sub in state._state_ctx.all_states:
        for group in sub._fsdp_param_groups:
            group.post_backward()
    state._root_post_backward_final_callback()
