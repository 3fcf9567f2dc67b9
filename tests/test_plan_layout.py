"""The layout model (plan/layout.py): torch-free, and the one source of schedules, splits and counts."""

import subprocess
from pathlib import Path
import sys

import pytest

from eurotron.config import ModelConfig, ParallelConfig
from eurotron.plan.layout import (SCHEDULES, in_flight_micro_batches, micro_batch_count, schedule, stage_params,
                                  stages_of_rank, total_params, world_size_problem)


def test_importing_the_plan_imports_no_torch():
    code = ("import sys, eurotron.plan.layout, eurotron.plan.memory; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_schedule_names_a_torch_class():
    from torch.distributed.pipelining.schedules import get_schedule_class

    for spec in SCHEDULES.values():
        assert isinstance(get_schedule_class(spec.torch_class), type), spec
    with pytest.raises(ValueError, match="unknown pipeline schedule 'nope'"):
        schedule("nope")


def test_schedule_rules():
    assert schedule("interleaved_1f1b").micro_batch_problem(8, 4) is None
    assert "multiple of 2" in schedule("interleaved_1f1b").micro_batch_problem(9, 4)
    assert "at least one per stage" in schedule("dualpipev").micro_batch_problem(6, 4)
    assert "fewer than parallel.pp=4" in schedule("1f1b").micro_batch_problem(3, 4)


def test_micro_batches_and_world_size():
    assert micro_batch_count(512, 1, 64) == 8
    par = ParallelConfig(tp=4, pp=4, dp_shard=16)
    assert world_size_problem(par, 256) is None
    assert "needs pp*dp_replicate*dp_shard*tp=256 processes but 8" in world_size_problem(par, 8)


def test_stage_params_add_up_to_the_model():
    m = ModelConfig(vocab_size=1000, hidden_size=64, num_layers=10, num_heads=4, num_kv_heads=2,
                    ffn_hidden_size=128)
    for par in (ParallelConfig(pp=4, pp_virtual_stages=2, pp_schedule="interleaved_1f1b"),
                ParallelConfig(pp=2, pp_virtual_stages=2, pp_schedule="zbv_zero_bubble"), ParallelConfig()):
        assert sum(stage_params(m, par, r).total for r in range(par.pp)) == total_params(m)
        assert sorted(s for r in range(par.pp) for s in stages_of_rank(r, par)) == \
            list(range(par.pp * par.pp_virtual_stages if par.pp > 1 else 1))


def test_lower_floors_do_not_import_higher_ones():
    """plan/ imports neither torch nor parallel/; parallel/ imports nothing from train/ (DESIGN.md)."""
    src = Path(__file__).resolve().parents[1] / "src" / "eurotron"
    for path in (src / "parallel").glob("*.py"):
        assert "..train" not in path.read_text(), path
    for path in (src / "plan").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "..parallel" not in text, path


@pytest.mark.parametrize("pp,v,n_micro", [(4, 2, 32), (8, 2, 64), (8, 2, 32), (4, 2, 8), (4, 3, 12), (2, 2, 2)])
def test_in_flight_micro_batches_follow_torchs_interleaved_schedule(pp, v, n_micro):
    """The layout model's in-flight count per local stage is the peak of torch's own action list."""
    from torch.distributed.pipelining.schedules import ScheduleInterleaved1F1B, _ComputationType

    torch_schedule = ScheduleInterleaved1F1B.__new__(ScheduleInterleaved1F1B)  # the order, without stages
    torch_schedule.n_local_stages, torch_schedule.pp_group_size, torch_schedule._n_microbatches = v, pp, n_micro
    torch_schedule.number_of_rounds = max(1, n_micro // pp)
    torch_schedule.microbatches_per_round = n_micro // torch_schedule.number_of_rounds
    par = ParallelConfig(pp=pp, pp_virtual_stages=v, pp_schedule="interleaved_1f1b")
    for rank in range(pp):
        live, peak = [0] * v, [0] * v
        for action in torch_schedule._calculate_single_rank_operations(rank):
            if action is None:
                continue
            local = action.stage_index // pp
            if action.computation_type == _ComputationType.FORWARD:
                live[local] += 1
            elif action.computation_type in (_ComputationType.FULL_BACKWARD, _ComputationType.BACKWARD_INPUT):
                live[local] -= 1
            if sum(live) > sum(peak):
                peak = list(live)
        assert in_flight_micro_batches(par, n_micro, rank) == peak, (rank, peak)
    # 1F1B: pp - rank on a rank (warm-up pp - 1 - rank, then one forward before each backward); GPipe: all.
    assert [in_flight_micro_batches(ParallelConfig(pp=4), 8, r) for r in range(4)] == [[4], [3], [2], [1]]
    assert in_flight_micro_batches(ParallelConfig(pp=4, pp_schedule="gpipe"), 8, 3) == [8]


def test_the_layout_object_answers_from_the_functions():
    from eurotron.compose import compose_train
    from eurotron.plan.layout import Layout
    from eurotron.plan.memory import estimate_memory

    cfg, _ = compose_train(["experiment=meluxina_llama3_70b", "data.path=/d", "parallel.tp=4", "parallel.pp=8",
                            "parallel.dp_shard=8", "parallel.dp_replicate=1", "parallel.pp_schedule=interleaved_1f1b",
                            "parallel.pp_virtual_stages=2", "data.micro_batch_size=1"])
    layout = Layout.from_config(cfg)
    assert (layout.world_size, layout.num_stages, layout.micro_batches) == (256, 16, 64)
    assert layout.schedule.torch_class == "Interleaved1F1B" and layout.stages_of(0) == [0, 8]
    assert [len(r) for r in layout.stage_ranges] == [5] * 16 and layout.rank_of(9) == 1
    plans = estimate_memory(cfg).ranks
    assert [p.in_flight for p in plans] == [layout.in_flight(r) for r in range(8)]
    assert plans[0].layers == layout.params(0).layers == 10
