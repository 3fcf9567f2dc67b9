"""DeepSpeed ZeRO state <-> eurotron's layout-free DCP checkpoint (not DeepSpeed's own format).

The state is written under exactly the keys a single process or FSDP2 writes (``model.<fqn>``,
``optim.state.<fqn>.exp_avg|exp_avg_sq|step``, ``optim.param_groups.<fqn>.<key>``: checkpoint.py),
so a DeepSpeed run resumes into FSDP2, TP or one process, converts to HF, and the other way round.

Save: one parameter at a time, DeepSpeed assembles the full fp32 master weight and Adam moments from
its partitions (``safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state``: collectives); each
rank keeps only its dim-0 chunk as a ``Shard(0)`` DTensor over the data-parallel mesh, so DCP writes
every element once and a rank holds one full parameter plus 1/dp of the rest at any time. Load: DCP
reads the same Shard(0) chunks; each parameter is assembled (``full_tensor``) and handed back to
DeepSpeed's partitions (``safe_set_full_*``), then the working (bf16/fp32) copies are refreshed.
Cost at 70B: per parameter one all-gather of the full fp32 tensor (the largest, the 128k x 8192
embedding, is 4 GiB) three times (weight, two moments); the whole model passes each rank's memory
once per save, ~3 x 280 GB of all-gather traffic per rank and checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Shard

MOMENTS = ("exp_avg", "exp_avg_sq")
# Set by the optimizer's construction, not by the checkpoint (how AdamW runs, not what it learned).
IMPLEMENTATION_KEYS = ("params", "fused", "foreach", "capturable", "differentiable")


def _utils():
    from deepspeed import utils

    return utils


def _parameters(model) -> List[Tuple[str, torch.nn.Parameter]]:
    """Every name a single-process state dict has, tied aliases included (they share one tensor)."""
    return list(model.engine.module.named_parameters(remove_duplicate=False))


def _shape(p: torch.nn.Parameter) -> torch.Size:
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape  # ZeRO-3 keeps an empty placeholder


def _chunk(full: torch.Tensor, mesh) -> torch.Tensor:
    """This rank's Shard(0) piece of a full tensor (a plain tensor without a mesh)."""
    if mesh is None:
        return full
    world, rank = mesh.size(), mesh.get_local_rank()
    pieces = torch.chunk(full, world, dim=0) if full.dim() else [full]
    local = pieces[rank].clone() if rank < len(pieces) else full.new_empty((0, *full.shape[1:]))
    return DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride())


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if isinstance(value, DTensor) else value


def _state(model, mesh, value_of: Callable[[torch.nn.Parameter, Optional[str]], torch.Tensor],
           step: torch.Tensor) -> Dict[str, Any]:
    optimizer = model.engine.optimizer.optimizer  # eurotron's AdamW inside DeepSpeed's ZeRO wrapper
    named = _parameters(model)
    state: Dict[str, Any] = {"model": {}, "optim": {}}
    cached: Dict[int, torch.Tensor] = {}
    for fqn, p in named:
        if id(p) not in cached:  # a tied alias reuses the tensor gathered under its first name
            cached[id(p)] = _chunk(value_of(p, None), mesh)
        state["model"][fqn] = cached[id(p)]
    by_name = dict(named)
    for group, names in zip(optimizer.param_groups, model.group_names):
        for fqn in names:
            for key in MOMENTS:
                state["optim"][f"state.{fqn}.{key}"] = _chunk(value_of(by_name[fqn], key), mesh)
            state["optim"][f"state.{fqn}.step"] = step.clone()
            for key, value in group.items():
                if key != "params":
                    state["optim"][f"param_groups.{fqn}.{key}"] = value
    return state


def _has_state(optimizer: torch.optim.Optimizer) -> bool:
    # ZeRO-3 touches optimizer.state (a defaultdict) before any step: empty entries are no state.
    return any(optimizer.state.values())


def _step_count(model) -> torch.Tensor:
    states = [st for st in model.engine.optimizer.optimizer.state.values() if st]
    if not states:
        return torch.zeros((), dtype=torch.float32)
    return states[0]["step"].detach().float().cpu().reshape(())


def gathered_state(model, mesh) -> Dict[str, Any]:
    """The run's model and optimizer state in checkpoint.py's layout (collective: every rank calls it)."""
    utils = _utils()

    def value_of(p, key):
        full = utils.safe_get_full_fp32_param(p) if key is None else utils.safe_get_full_optimizer_state(p, key)
        return full.detach().float()

    _link_optimizer_state(model)
    return _state(model, mesh, value_of, _step_count(model))


def _template(model, mesh) -> Dict[str, Any]:
    """A state of the right keys, shapes and shards for DCP to load into (no collective)."""
    def value_of(p, key):
        return torch.zeros(_shape(p), dtype=torch.float32, device=model.device)

    return _state(model, mesh, value_of, torch.zeros((), dtype=torch.float32))


def _flat_partitions(zero) -> List[torch.Tensor]:
    """The fp32 master partitions AdamW updates (ZeRO-3 lends them to AdamW's groups only inside step)."""
    if hasattr(zero, "fp32_partitioned_groups_flat"):
        return list(zero.fp32_partitioned_groups_flat)
    return list(zero.single_partition_of_fp32_groups)


def _ensure_optimizer_state(model) -> None:
    """Give AdamW its state before its first step, as that step would create it (zero moments, step
    0), so the checkpoint's values can be copied in."""
    optimizer = model.engine.optimizer.optimizer
    if _has_state(optimizer):
        return
    on_device = bool(optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"))
    for flat in _flat_partitions(model.engine.optimizer):
        optimizer.state[flat] = {
            "step": torch.zeros((), dtype=torch.float32, device=flat.device if on_device else "cpu"),
            "exp_avg": torch.zeros_like(flat, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(flat, memory_format=torch.preserve_format),
        }

def _link_optimizer_state(model) -> None:
    """ZeRO-1/2 map each parameter's fragment into AdamW's moments once, after its first step, when
    only the first group has state (0.19.8 steps group by group): map again now every group has it."""
    zero = model.engine.optimizer
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state") and _has_state(zero.optimizer):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def _refresh_working_copies(model) -> None:
    """Copy the fp32 masters into the parameters the forward uses (bf16 or fp32 working copies)."""
    zero = model.engine.optimizer
    if hasattr(zero, "update_lp_params"):  # ZeRO-1/2: each rank's partition, then an all-gather
        zero.update_lp_params()
        return
    for sub_group in range(len(zero.fp16_groups)):  # ZeRO-3: each rank's partition only
        zero._reassign_or_swap_out_partitioned_parameters(sub_group)


def load_into_engine(model, mesh, checkpoint_id: str, optimizer_state: bool = True) -> None:
    """Read a layout-free checkpoint into DeepSpeed's partitions (collective). ``optimizer_state=False``
    reads the weights alone (train.init_from)."""
    utils = _utils()
    state = _template(model, mesh)
    if not optimizer_state:
        state = {"model": state["model"]}
    dcp.load(state, checkpoint_id=checkpoint_id)
    if optimizer_state:
        _ensure_optimizer_state(model)
        _link_optimizer_state(model)
    done = set()
    for fqn, p in _parameters(model):
        if id(p) in done:
            continue
        done.add(id(p))
        utils.safe_set_full_fp32_param(p, _full(state["model"][fqn]).to(model.device))
        if optimizer_state:
            for key in MOMENTS:
                utils.safe_set_full_optimizer_state(p, _full(state["optim"][f"state.{fqn}.{key}"]).to(model.device), key)
    if optimizer_state:
        _restore_groups(model, state["optim"])
    _refresh_working_copies(model)
    if dist.is_initialized():
        dist.barrier()


def _restore_groups(model, optim: Dict[str, Any]) -> None:
    optimizer = model.engine.optimizer.optimizer
    for group, names in zip(optimizer.param_groups, model.group_names):
        if not names:
            continue
        first = names[0]
        for key in list(group):
            saved = optim.get(f"param_groups.{first}.{key}")
            if key not in IMPLEMENTATION_KEYS and saved is not None:
                group[key] = saved
    step = optim[f"state.{model.group_names[0][0]}.step"]  # one count for every parameter
    for st in optimizer.state.values():
        if st:
            st["step"].copy_(step.to(st["step"].device))
