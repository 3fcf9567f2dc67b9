"""The training loop's guards (issue 12, points 4, 9, 10): non-finite steps, loss spikes, a non-finite
state at save time, the hang watchdog and goodput accounting. NaN is injected by monkeypatching one
trainer (never a hook in the product code); multi-rank decisions are checked in one torchrun launch."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eurotron.compose import compose_train
from eurotron.config import ConfigError
from eurotron.train.checkpoint import latest_checkpoint
from eurotron.train.nonfinite import TrainingHalted
from eurotron.train.trainer import Trainer
from eurotron.train.watchdog import FIRST_STEPS_S, FLOOR_S, WARMUP_STEPS, Watchdog
from eurotron.validation import validate_train_config

from small_run import SMALL_MODEL, prepare_dataset

TESTS = Path(__file__).resolve().parent
NAN = float("nan")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("data") / "demo")


def overrides(dataset: Path, run_dir: Path, *extra: str):
    return ["experiment=demo", "parallel=single", f"data.path={dataset}", f"run_dir={run_dir}", "data.seq_len=64",
            "data.global_batch_size=4", "data.micro_batch_size=2", "train.steps=6", "scheduler.warmup_steps=1",
            "checkpoint.every=0", "eval.every=0", "logging.plot_loss_curve=false", "logging.console=false",
            *SMALL_MODEL, *extra]


def poisoned_trainer(args, grad_nan=(), loss_nan=(), loss_times=None):
    """A Trainer whose step N (1-based) gets a NaN gradient / NaN loss / a loss scaled by loss_times[N]."""

    class Poisoned(Trainer):
        def forward_backward(self, micro_batches, kept):
            loss_sum = super().forward_backward(micro_batches, kept)
            step = self.step + 1
            if step in grad_nan:
                next(self.model.parameters()).grad.view(-1)[0] = NAN
            if step in loss_nan:
                loss_sum = loss_sum * NAN
            if loss_times and step in loss_times:
                loss_sum = loss_sum * loss_times[step]
            return loss_sum

    cfg, text = compose_train(args)
    validate_train_config(cfg, world_size=1)
    return Poisoned(cfg, text)


def strict_records(run_dir: Path):
    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}: not strict JSON")

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in (json.loads(line, parse_constant=refuse) for line in lines)}


def snapshot(trainer):
    params = [p.detach().clone() for p in trainer.model.parameters()]
    state = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
             for k, s in trainer.optimizer.state_dict()["state"].items()}
    return params, state, trainer.scheduler.state_dict()


def same(a, b) -> bool:
    """Same parameters and optimizer state (the schedule advances on skipped steps: nonfinite.py)."""
    (pa, sa, _), (pb, sb, _) = a, b
    return (all(torch.equal(x, y) for x, y in zip(pa, pb)) and sa.keys() == sb.keys()
            and all(torch.equal(sa[k][n], sb[k][n]) if torch.is_tensor(sa[k][n]) else sa[k][n] == sb[k][n]
                    for k in sa for n in sa[k]))


# ------------------------------------------------------------------------------ non-finite steps
def test_a_nonfinite_step_leaves_model_and_optimizer_untouched(dataset, tmp_path):
    trainer = poisoned_trainer(overrides(dataset, tmp_path / "r"), grad_nan={2}, loss_nan={3})
    trainer.train_step()
    for step in (2, 3):
        before, consumed = snapshot(trainer), trainer.loader.state_dict()["consumed_samples"]
        record = trainer.train_step()
        assert record["skipped"] is True and record["skip_reason"] == "nonfinite", record
        assert same(before, snapshot(trainer)), f"step {step} changed the model or optimizer"
        assert trainer.scheduler.last_epoch == before[2]["last_epoch"] + 1  # the schedule moves on
        assert all(p.grad is None for p in trainer.model.parameters())  # no NaN carried into the next step
        assert trainer.loader.state_dict()["consumed_samples"] == consumed + 4  # the bad batch is consumed
        assert trainer.step == step
    assert math.isnan(record["loss"]) and math.isfinite(trainer.train_step()["loss"])
    assert trainer.guard.nonfinite_steps == 2 and trainer.guard.skipped == [2, 3]


def test_skip_mode_logs_strict_json_counts_and_goodput(dataset, tmp_path):
    run = tmp_path / "r"
    poisoned_trainer(overrides(dataset, run, "checkpoint.every=3"), loss_nan={2}, grad_nan={4}).fit()
    records = strict_records(run)
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    assert records[2]["loss"] is None and records[2]["skipped"] and records[2]["nonfinite_steps"] == 1
    assert records[4]["grad_norm"] is None and math.isfinite(records[4]["loss"]) and records[4]["nonfinite_steps"] == 2
    assert [s for s, r in records.items() if r["skipped"]] == [2, 4]
    assert all(math.isfinite(r["loss"]) for s, r in records.items() if s not in (2,))
    assert latest_checkpoint(run / "checkpoints").name == "step_00000006"
    # goodput: every record carries the job totals; goodput.json holds the attempt and the job.
    assert all({"time_startup_s", "time_train_s", "time_checkpoint_s", "goodput_pct"} <= set(r) for r in records.values())
    good = json.loads((run / "goodput.json").read_text())
    attempt, job = good["attempts"][-1], good["job"]
    assert attempt["ended"] == "finished" and attempt["reached_step"] == 6 and attempt["lost_steps"] == 0
    assert attempt["train_s"] > 0 and attempt["checkpoint_s"] > 0 and attempt["skipped_s"] > 0
    assert attempt["startup_s"] > 0 and attempt["wall_s"] >= attempt["startup_s"] + attempt["train_s"]
    assert 0 < job["goodput_pct"] < 100


def test_stop_mode_names_the_step(dataset, tmp_path):
    trainer = poisoned_trainer(overrides(dataset, tmp_path / "r", "train.nonfinite=stop", "checkpoint.every=1"),
                               grad_nan={3})
    with pytest.raises(TrainingHalted, match=r"step 3: non-finite grad_norm=nan"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000002"


def test_consecutive_skips_stop_even_in_skip_mode(dataset, tmp_path):
    trainer = poisoned_trainer(overrides(dataset, tmp_path / "r", "train.max_nonfinite_steps=3"),
                               loss_nan={2, 3, 4, 5, 6})
    with pytest.raises(TrainingHalted, match=r"step 4: 3 consecutive steps skipped .*max_nonfinite_steps=3"):
        trainer.fit()
    assert sorted(strict_records(tmp_path / "r")) == [1, 2, 3, 4]  # the failing step is still logged


def test_a_loss_spike_is_skipped(dataset, tmp_path):
    run = tmp_path / "r"
    trainer = poisoned_trainer(overrides(dataset, run, "train.spike_sigma=4", "train.spike_window=3"),
                               loss_times={5: 50.0})
    trainer.fit()
    records = strict_records(run)
    assert [s for s, r in records.items() if r["skipped"]] == [5]
    assert records[5]["skip_reason"] == "spike" and records[5]["spike_steps"] == 1 and records[6]["spike_steps"] == 1
    assert trainer.scheduler.last_epoch == 6  # 6 steps: the schedule advances on the skipped one too


def test_a_nonfinite_state_is_never_checkpointed(dataset, tmp_path):
    run = tmp_path / "r"
    trainer = poisoned_trainer(overrides(dataset, run, "checkpoint.every=2"))
    original = trainer.optimizer.step

    def step_then_poison(*a, **k):  # an optimizer state going Inf while loss and grads stay finite
        out = original(*a, **k)
        if trainer.step == 3:
            next(iter(trainer.optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = math.inf
        return out

    trainer.optimizer.step = step_then_poison
    with pytest.raises(TrainingHalted, match=r"step 4: refusing to save a checkpoint.*latest is untouched \(step_00000002\)"):
        trainer.fit()
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(("step_", ".tmp"))) == ["step_00000002"]


def test_guard_keys_are_validated(dataset, tmp_path):
    cfg, _ = compose_train(overrides(dataset, tmp_path / "r", "train.nonfinite=ignore", "train.spike_sigma=inf",
                                     "train.hang_timeout_s=-1", "train.max_nonfinite_steps=0",
                                     "train.spike_window=1", "train.hang_timeout_save_s=nan"))
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, world_size=1)
    for key in ("train.nonfinite='ignore'", "train.spike_sigma=inf", "train.hang_timeout_s=-1",
                "train.max_nonfinite_steps=0", "train.spike_window=1", "train.hang_timeout_save_s=nan"):
        assert key in str(err.value)


# ------------------------------------------------------------------------------ multi-rank
def test_every_pipeline_rank_takes_the_same_decision(dataset, tmp_path):
    """pp2 on 2 gloo ranks, one launch: a NaN gradient only on the first stage (which has no loss) and a
    NaN loss only on the last stage are skipped by both ranks; stop mode stops both at the same step;
    a NaN parameter on one rank makes both refuse the save."""
    base = ["parallel=pp2", "parallel.pp_schedule=gpipe", "logging.log_every=1"]
    runs = [
        {"name": "skip", "overrides": overrides(dataset, tmp_path / "skip", *base, "train.steps=5"),
         "grad_nan": {"0": [2]}, "loss_nan": {"1": [4]}},
        {"name": "stop", "overrides": overrides(dataset, tmp_path / "stop", *base, "train.steps=4",
                                                "train.nonfinite=stop"), "grad_nan": {"0": [2]}},
        {"name": "save", "overrides": overrides(dataset, tmp_path / "save", *base, "train.steps=4",
                                                "checkpoint.every=2"), "state_nan_before_save": {"1": [4]}},
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"runs": runs}))
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=2",
           str(TESTS / "guards_worker.py"), str(spec)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]

    def outcomes(name):
        return [json.loads((tmp_path / name / f"rank{r}.json").read_text()) for r in (0, 1)]

    skip = outcomes("skip")
    assert all(o["skipped"] == [2, 4] and o["scheduler_epoch"] == 5 and o["optimizer_steps"] == [3] for o in skip)
    records = strict_records(tmp_path / "skip")
    assert records[2]["grad_norm"] is None and records[4]["loss"] is None
    stop = outcomes("stop")
    assert all(o["step"] == 2 and o["scheduler_epoch"] == 2 and o["error"].startswith("step 2: non-finite grad_norm")
               for o in stop), stop
    save = outcomes("save")
    assert all(o["error"] and "step 4: refusing to save" in o["error"] and "on 1 rank(s)" in o["error"]
               for o in save), save
    assert (tmp_path / "save" / "checkpoints" / "latest").read_text().strip() == "step_00000002"


# ------------------------------------------------------------------------------ watchdog
def test_watchdog_allowances():
    median = [None]
    dog = Watchdog(None, 1800.0, 4, lambda: median[0])
    try:
        assert dog.step_allowance() == FIRST_STEPS_S
        dog.steps_watched, median[0] = WARMUP_STEPS, 0.5
        assert dog.step_allowance() == FLOOR_S  # 10 x 0.5 s is below the floor
        median[0] = 100.0
        assert dog.step_allowance() == 1000.0
        with dog.evaluation(3):  # nests and restores without firing
            with dog.save(3):
                pass
    finally:
        dog.close()
    assert Watchdog(7, 0, 1, lambda: None).step_allowance() == 7.0
    off = Watchdog(0, 0, 1, lambda: None)
    assert not off.enabled and off._thread is None


DRIVER = """
import os, sys, time
from eurotron.train.trainer import Trainer
original_step, original_fb = Trainer.train_step, Trainer.forward_backward

def stalled_step(self):  # an injected hang (a collective that never returns)
    if os.environ["INJECT"] == "stall" and self.step + 1 == 2:
        time.sleep(120)
    return original_step(self)

def nan_loss(self, micro_batches, kept):
    loss_sum = original_fb(self, micro_batches, kept)
    return loss_sum * float("nan") if os.environ["INJECT"] == "nan" and self.step + 1 == 2 else loss_sum

Trainer.train_step, Trainer.forward_backward = stalled_step, nan_loss
from eurotron.cli.train import main
sys.argv = ["eurotron-train", *sys.argv[1:]]
main()
"""


def test_cli_hang_dumps_stacks_and_nonfinite_stop_exits_nonzero(dataset, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [sys.executable, str(driver), *overrides(dataset, tmp_path / "hang", "train.hang_timeout_s=2")]
    began = time.monotonic()
    done = subprocess.run(args, env={**os.environ, "INJECT": "stall"}, capture_output=True, text=True, timeout=100)
    assert done.returncode == 3, done.stderr[-3000:]
    assert time.monotonic() - began < 60
    assert "hang: step 2 (train.hang_timeout_s=2 s) has run longer than 2 s" in done.stderr, done.stderr[-3000:]
    assert "stalled_step" in done.stderr and "Thread" in done.stderr  # every thread's stack, the stuck frame too

    args = [sys.executable, str(driver), *overrides(dataset, tmp_path / "nan", "train.nonfinite=stop")]
    done = subprocess.run(args, env={**os.environ, "INJECT": "nan"}, capture_output=True, text=True, timeout=100)
    assert done.returncode != 0 and "step 2: non-finite loss=nan" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------ goodput across a restart
def test_goodput_counts_work_lost_to_a_restart(dataset, tmp_path):
    run = tmp_path / "r"
    args = overrides(dataset, run, "train.steps=8", "checkpoint.every=3", "checkpoint.save_final=false")
    poisoned_trainer([*args, "train.stop_after=5"]).fit()  # reaches step 5, last checkpoint at step 3
    poisoned_trainer(args).fit()  # resumes at 3: steps 4 and 5 are recomputed
    good = json.loads((run / "goodput.json").read_text())
    first, second = good["attempts"]
    assert (first["reached_step"], first["lost_steps"]) == (5, 0)
    assert (second["start_step"], second["reached_step"], second["lost_steps"]) == (3, 8, 2)
    assert second["lost_s"] == pytest.approx(2 * first["median_step_s"], rel=1e-3)
    job = good["job"]
    assert job["attempts"] == 2 and job["lost_steps"] == 2
    assert job["train_s"] == pytest.approx(first["train_s"] + second["train_s"], rel=1e-3)
    productive = job["train_s"] - job["skipped_s"] - job["lost_s"]
    assert job["goodput_pct"] == pytest.approx(100 * productive / job["wall_s"], rel=1e-3)
    last = strict_records(run)[8]
    assert last["time_lost_s"] == pytest.approx(second["lost_s"], rel=1e-2, abs=1e-3)  # records: 3 decimals
