"""Issue 13, points 4 and 5: FSDP2 units and their choices; a training step without host syncs.

* Which modules are FSDP units, with which ``reshard_after_forward``, and which units reduce their
  gradients per micro-batch: read from FSDP2's own state on a fake process group (no launch).
* ``parallel.fsdp_grad_sync`` and ``parallel.fsdp_reshard_after_forward`` give the single-process
  losses, gradient norms and weights: one 2-rank launch (dp_shard=2, 4 micro-batches per rank) and
  one 4-rank launch (PP2 x DP2, resharded after forward).
* Device-to-host reads per training step, counted with a TorchDispatchMode (``_local_scalar_dense``,
  the op behind ``.item()``/``float()``/``bool()`` of a tensor, and copies of a non-CPU tensor to the
  CPU) plus ``Tensor.tolist`` (on the CPU it reads memory without dispatching an op): 0 on non-log
  steps. On the CPU the "device" is the CPU, so this counts the explicit reads the trainer makes of
  the tensors it computes, which on a GPU are exactly the syncs; reads of the loader thread's own host
  tensors (packing, Goldfish) happen in another thread and are not counted.
* A non-finite step is skipped on the device between log steps, and judged when read.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.utils._python_dispatch import TorchDispatchMode

from eurotron.compose import compose_train
from eurotron.data.goldfish import GoldfishTransform
from eurotron.data.loader import BatchLoader, TokenDataset
from eurotron.data.prefetch import Prefetcher
from eurotron.parallel.data import gradient_sync
from eurotron.parallel.mesh import build_mesh
from eurotron.parallel.parallelize import parallelize
from eurotron.train.metrics import read_metrics
from eurotron.train.nonfinite import TrainingHalted
from eurotron.train.trainer import Trainer
from eurotron.validation import validate_train_config

from test_parallel_dist import compare, launch, overrides as dist_overrides, runs_for, train_here
from test_train_guards import dataset, overrides as guard_overrides, poisoned_trainer  # noqa: F401 (fixture)

SMALL = ["experiment=demo", "parallel=single", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
         "model.num_kv_heads=2", "model.ffn_hidden_size=176", "model.vocab_size=512"]


# ------------------------------------------------------------------------------ FSDP units
def _units(*extra: str, world: int, rank: int = 0):
    """This rank's model parts built over a fake process group: {fqn: (unit id, reshard_after_forward)}."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    cfg, _ = compose_train([*SMALL, *extra])
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        model = parallelize(cfg, build_mesh(cfg.parallel, torch.device("cpu")), torch.device("cpu"), seed=0,
                            materialize=False)
        units = {}
        for part in model.modules:
            for name, module in part.named_modules():
                if isinstance(module, FSDPModule):
                    group = fully_shard.state(module)._fsdp_param_group
                    units[name or "<root>"] = (id(group) if group else None,
                                               group is not None and group.post_forward_mesh_info is not None)
        return units, model
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("choice,blocks,head", [("auto", True, False), ("true", True, True), ("false", False, False)])
def test_fsdp_units_and_reshard_without_pp(choice, blocks, head):
    units, _ = _units("parallel.dp_shard=2", f"parallel.fsdp_reshard_after_forward={choice}", world=2)
    assert set(units) == {"<root>", "tok_embeddings", "layers.0", "layers.1", "norm", "output"}
    assert units["norm"][0] == units["output"][0] is not None  # [norm, output] is one unit
    assert units["<root>"][0] is None  # everything is in a sub-unit: the root gathers nothing
    assert [units[n][1] for n in ("layers.0", "layers.1", "tok_embeddings")] == [blocks] * 3
    assert units["output"][1] is head


@pytest.mark.parametrize("choice,blocks,head", [("auto", False, False), ("true", True, True)])
def test_fsdp_units_and_reshard_under_pp(choice, blocks, head):
    extra = ("parallel.pp=2", "parallel.dp_shard=2", f"parallel.fsdp_reshard_after_forward={choice}")
    first, _ = _units(*extra, world=4, rank=0)
    last, _ = _units(*extra, world=4, rank=2)
    assert set(first) == {"<root>", "tok_embeddings", "layers.0"}
    assert set(last) == {"<root>", "layers.1", "norm", "output"}
    assert first["layers.0"][1] is first["tok_embeddings"][1] is last["layers.1"][1] is blocks
    assert last["output"][1] is head


def test_a_tied_weight_stays_in_the_root():
    units, _ = _units("parallel.dp_shard=2", "model.tie_embeddings=true", world=2)
    assert set(units) == {"<root>", "layers.0", "layers.1"} and units["<root>"][0] is not None


@pytest.mark.parametrize("mode,reduce_before_last", [("micro_batch", True), ("last", False)])
def test_gradient_sync_per_micro_batch_or_at_the_last(mode, reduce_before_last):
    _, model = _units("parallel.dp_shard=2", world=2)
    part = model.parts[0]
    groups = [fully_shard.state(m)._fsdp_param_group for m in part.modules() if isinstance(m, FSDPModule)]
    for last, want in ((False, reduce_before_last), (True, True)):
        gradient_sync(part, last, mode)
        assert {g.reduce_grads for g in groups if g is not None} == {want}


def test_bad_fsdp_choices_are_config_errors(tmp_path):
    from eurotron.config import ConfigError

    cfg, _ = compose_train([*SMALL, "parallel.fsdp_grad_sync=always", "parallel.fsdp_reshard_after_forward=sometimes"])
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=1)
    assert "parallel.fsdp_grad_sync='always': must be one of micro_batch, last" in str(err.value)
    assert "parallel.fsdp_reshard_after_forward='sometimes': must be one of auto, true, false" in str(err.value)


# ------------------------------------------------------------------------------ equivalence (one launch)
FSDP_CHOICES = [  # micro_batch with reshard auto is the default: test_parallel_dist's dp2_fsdp covers it
    ("dp2_last_no_reshard", "llama", ["parallel=dp2_fsdp", "parallel.fsdp_grad_sync=last",
                                      "parallel.fsdp_reshard_after_forward=false"]),
    # read every 3rd step only: steps 1, 2, 4, 5 apply fused AdamW's on-device found_inf to DTensor shards
    ("dp2_micro_batch_reshard", "llama", ["parallel=dp2_fsdp", "parallel.fsdp_grad_sync=micro_batch",
                                          "parallel.fsdp_reshard_after_forward=true", "logging.log_every=3"]),
]
LOGGED = {"dp2_last_no_reshard": range(1, 7), "dp2_micro_batch_reshard": (3, 6)}


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("fsdp_reference") / "llama"
    train_here(dist_overrides(dataset, run, "llama"))
    return run


def test_fsdp_choices_match_one_process(dataset, reference, tmp_path):  # noqa: F811
    """Each choice against the single-process run (4 micro-batches per rank): loss per step within 1e-5,
    grad norm, eval loss and final weights."""
    launch(2, runs_for(FSDP_CHOICES, dataset, tmp_path), tmp_path)
    problems = []
    for name, _, _ in FSDP_CHOICES:
        problems += compare(tmp_path / name, reference, LOGGED[name])[0]
    assert not problems, "\n".join(problems)


def test_pp2_dp2_resharding_after_forward_matches_one_process(dataset, reference, tmp_path):  # noqa: F811
    """PP2 x DP2 with every unit resharded after forward (auto keeps them gathered under PP: covered by
    test_parallel_dist's pp2_dp2_selective_ac), reading every 3rd step only: one 4-rank launch."""
    layout = [("pp2_dp2_reshard", "llama", ["parallel.pp=2", "parallel.dp_shard=2",
                                             "parallel.fsdp_reshard_after_forward=true", "logging.log_every=3"])]
    launch(4, runs_for(layout, dataset, tmp_path), tmp_path)
    problems, _ = compare(tmp_path / "pp2_dp2_reshard", reference, (3, 6))
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ host syncs
class DeviceReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host."""

    def __init__(self, counts: Counter, key):
        super().__init__()
        self.counts, self.key = counts, key

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts[self.key()] += 1
        elif func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst is not None \
                    and torch.device(dst).type == "cpu":
                self.counts[self.key()] += 1
        return func(*args, **kwargs)


def _count_reads(trainer: Trainer, monkeypatch, exclude_forward: bool) -> Counter:
    """fit() with every host read attributed to the step running (or just finished) when it happened."""
    counts: Counter = Counter()
    current = {"step": 0, "paused": False}

    def key():
        return "forward" if current["paused"] else current["step"]

    train_step = trainer.train_step

    def numbered_step():
        current["step"] = trainer.step + 1
        return train_step()

    trainer.train_step = numbered_step
    original_tolist, main = torch.Tensor.tolist, threading.main_thread()

    def tolist(t):
        if threading.current_thread() is main:
            counts[key()] += 1
        return original_tolist(t)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    if exclude_forward:  # model/attention.py's mask sync is the attention part's (issue 13 point 1)
        for part in trainer.model_parts:
            part.register_forward_pre_hook(lambda *_: current.update(paused=True))
            part.register_forward_hook(lambda *_: current.update(paused=False))
    with DeviceReads(counts, key):
        trainer.fit()
    return counts


def _sync_trainer(dataset, tmp_path):  # noqa: F811
    # document masking on (the tiny model's default), Goldfish on (its counts are read too), log every 4th step
    args = guard_overrides(dataset, tmp_path / "r", "train.steps=8", "logging.log_every=4", "loss.name=goldfish",
                           "loss.k=4", "model.document_masking=true")
    cfg, text = compose_train(args)
    validate_train_config(cfg, world_size=1)
    return Trainer(cfg, text)


def test_no_host_read_outside_log_steps(dataset, tmp_path, monkeypatch):  # noqa: F811
    counts = _count_reads(_sync_trainer(dataset, tmp_path), monkeypatch, exclude_forward=True)
    per_step = {s: counts[s] for s in range(1, 9)}
    assert all(per_step[s] == 0 for s in (1, 2, 3, 5, 6, 7)), per_step
    assert per_step[4] >= 1 and per_step[8] >= 1, per_step  # the log steps do read: the counter works
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in records] == [4, 8] and all("goldfish_dropped_frac" in r for r in records)


def test_no_host_read_outside_log_steps_including_the_forward(dataset, tmp_path, monkeypatch):  # noqa: F811
    counts = _count_reads(_sync_trainer(dataset, tmp_path), monkeypatch, exclude_forward=False)
    assert all(counts[s] == 0 for s in (1, 2, 3, 5, 6, 7)), dict(counts)


def test_a_nonfinite_step_is_skipped_on_the_device_and_judged_when_read(dataset, tmp_path):  # noqa: F811
    run = tmp_path / "skip"
    trainer = poisoned_trainer(guard_overrides(dataset, run, "logging.log_every=5"), grad_nan={2})
    trainer.train_step()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    record = trainer.train_step()  # not a read step: the verdict is not known on the host yet
    assert "skipped" not in record and "loss" not in record
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # found_inf skipped it
    assert all(int(s["step"]) == 1 for s in trainer.optimizer.state.values())  # Adam's step count held back
    trainer.train_step()
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # step 3 updates
    trainer.fit()  # steps 4-6; step 5 reads steps 2-5
    records = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}
    assert records[2]["skipped"] and records[2]["grad_norm"] is None and records[5]["nonfinite_steps"] == 1

    stop = poisoned_trainer(guard_overrides(dataset, tmp_path / "stop", "logging.log_every=4", "train.nonfinite=stop"),
                            grad_nan={2})
    with pytest.raises(TrainingHalted, match=r"step 2: non-finite grad_norm"):
        stop.fit()
    assert stop.step == 4  # decided at the next read step: up to log_every - 1 steps late (documented)


# ------------------------------------------------------------------------------ prefetching loader
def test_prefetcher_checkpoints_the_consumed_position_and_its_counts(dataset):  # noqa: F811
    def loader(transform=None):
        return BatchLoader(TokenDataset(dataset), seq_len=32, global_batch_size=4, micro_batch_size=2,
                           batch_transform=transform)

    plain = loader(GoldfishTransform(k=4, h=13))
    fetched = Prefetcher(loader(GoldfishTransform(k=4, h=13)))
    for _ in range(3):
        want, got = plain.next_step(), fetched.next_step()
        assert all(torch.equal(w[k], g[k]) for w, g in zip(want, got) for k in w)
    # The thread has prepared step 4, yet the checkpoint says 3 steps were consumed.
    assert fetched.state_dict()["consumed_samples"] == plain.state_dict()["consumed_samples"] == 12
    assert fetched.pop_counts() == plain.batch_transform.pop_counts()  # counts of consumed steps only
    resumed = Prefetcher(loader())
    resumed.next_step()  # a position change discards what was prefetched
    resumed.load_state_dict(fetched.state_dict())
    want, got = plain.next_step(), resumed.next_step()
    assert all(torch.equal(w["input_ids"], g["input_ids"]) for w, g in zip(want, got))
