"""The training loop: data → forward/backward over micro-batches → clip → AdamW → log → checkpoint.

Reads top to bottom like nanoGPT's step. Parallelism is applied to the model before it reaches the
trainer (DESIGN.md principle 1): ``parallel.parallelize`` returns this rank's model parts (pipeline
stages, TP/FSDP-sharded) and runs their forward/backward; the trainer only knows the data-parallel
group for its batch slice and the global kept-token count. The loss rule is the same for every layout:
each rank back-propagates ``sum of its kept-token losses * dp_size / global kept tokens`` (DP averaging
divides by dp_size again), so the gradient is that of the mean over the kept tokens of the global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from ..config import ConfigError, TrainConfig
from ..data.blend import open_train_dataset
from ..data.goldfish import build_batch_transform, dropped_fraction_record
from ..data.loader import BatchLoader, TokenDataset, eval_batches
from ..data.prefetch import wrap_loader
from ..model import build_model, count_parameters, model_flops_per_token
from ..model.linear import onednn_available, set_cpu_matmul
from ..model.masks import check_trainable
from ..parallel.env import ProcessEnv, is_main_process, process_env, select_device
from ..parallel.layout import format_layout, gather_counts, node_placement
from ..parallel.mesh import build_mesh, collective_failure_line, init_distributed, resolve_backend
from ..parallel.parallelize import parallelize
from ..plan.layout import world_size_problem
from .checkpoint import CheckpointManager, load_checkpoint
from . import checkpoint_run_dir, preemption, resume_config
from ..model.loss import summed_cross_entropy
from .goodput import Goodput
from .hf_export import HFExporter
from .metrics import MetricsLogger
from .mfu import mfu  # peak FLOP/s: cluster.peak_flops, else detected (issue 13)
from .nonfinite import (NonFiniteGuard, check_state_before_save, halt_if_asked, nonfinite_flag, skips_on_device,
                        step_values)
from .optim import build_optimizer
from .schedule import build_scheduler
from .startup import StartupClock
from .step_reads import DeferredReads
from .systems import record_trained
from .watchdog import Watchdog

RESOLVED_CONFIG = "config.yaml"


class Trainer:
    def __init__(self, cfg: TrainConfig, config_yaml: str, env: Optional[ProcessEnv] = None) -> None:
        self._startup: Optional[StartupClock] = StartupClock()  # printed after the first step
        self.cfg = cfg
        self.config_yaml = config_yaml
        self.env = env or process_env()
        self.run_dir = Path(cfg.run_dir)
        self.device = select_device(cfg.cluster.device, self.env.local_rank)
        check_trainable(cfg.model.attention, self.device)  # flex has no CPU backward (device=auto, no GPU)
        if cfg.cluster.cpu_threads:
            torch.set_num_threads(cfg.cluster.cpu_threads)
        # On GPUs the choice only concerns stray CPU matmuls: a build without oneDNN keeps PyTorch's.
        set_cpu_matmul(cfg.cluster.cpu_matmul if onednn_available() else "aten")
        problem = world_size_problem(cfg.parallel, self.env.world_size)
        if problem:  # before any process group starts
            raise ConfigError(f"parallel: {problem}")
        if cfg.parallel.dp_engine == "deepspeed":  # missing DeepSpeed: said before any process group starts
            from ..parallel.deepspeed_engine import import_deepspeed

            import_deepspeed()
        self._startup.skip()
        init_distributed(self.env, self.device, cfg.cluster.backend, cfg.cluster.collective_timeout_minutes)
        self._startup.mark("rendezvous")
        checkpoint_run_dir.check(self.run_dir, cfg.checkpoint.resume)  # before any work: writable, no clobbering
        self.pmesh = build_mesh(cfg.parallel, self.device)
        self._startup.mark("mesh")
        # Data-parallel coordinates; a single process is DP rank 0 of 1.
        self.dp_rank, self.dp_size, self.dp_group = self.pmesh.dp_rank, self.pmesh.dp_size, self.pmesh.dp_group

        # data.path alone, or the weighted blend of data.blend (eval split and tokenizer: data.path's).
        self.dataset = open_train_dataset(cfg.data, "train")
        self._check_vocab()
        self._startup.mark("data_open")
        torch.manual_seed(cfg.train.seed)
        # This rank's parts of the model: one, or one per local pipeline stage; one optimizer each.
        self.parallel = parallelize(cfg, self.pmesh, self.device, seed=cfg.train.seed)
        self.model_parts = self.parallel.parts
        self.optimizers = [build_optimizer(part, cfg.optim, self.device) for part in self.model_parts]
        if cfg.parallel.dp_engine == "deepspeed":  # the part and its AdamW go into a DeepSpeed ZeRO engine
            from ..parallel.deepspeed_engine import attach_deepspeed

            self.parallel = attach_deepspeed(self.parallel, self.optimizers[0])
            self.model_parts = self.parallel.parts
        self.schedulers = [build_scheduler(opt, cfg.scheduler, cfg.train.steps) for opt in self.optimizers]
        self.model, self.optimizer, self.scheduler = self.model_parts[0], self.optimizers[0], self.schedulers[0]
        self._startup.mark("model_build")
        # The next step's batches are prepared in a background thread (pinned on GPUs): data/prefetch.py.
        self.loader = wrap_loader(BatchLoader(
            self.dataset,
            seq_len=cfg.data.seq_len,
            global_batch_size=cfg.data.global_batch_size,
            micro_batch_size=cfg.data.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            seed=cfg.data.seed,
            shuffle=cfg.data.shuffle,
            batch_transform=build_batch_transform(cfg.loss),  # Goldfish: narrows loss_mask
        ), self.device)
        self.eval_dataset = self._open_eval_split()
        self._startup.mark("data_open")
        # checkpoint.export_hf_every: rank 0 converts due checkpoints to HF format once committed (hf_export.py).
        self.hf_exporter = (HFExporter(cfg.checkpoint.export_hf_every, cfg.checkpoint.export_hf_dtype)
                            if cfg.checkpoint.export_hf_every and is_main_process() else None)
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints", cfg.checkpoint.keep_last, tokenizer_dir=self.dataset.tokenizer_dir,
            async_save=cfg.checkpoint.async_save,
            on_commit=self.hf_exporter.committed if self.hf_exporter is not None else None,
        )
        self.step = 0
        self.tokens_seen = 0
        self.resume_changes: List[resume_config.SettingChange] = []  # optimizer/schedule settings changed on resume
        self.guard = NonFiniteGuard(cfg.train)  # non-finite and loss-spike steps are skipped or stop the run
        # Loss, grad norm and kept tokens stay on the device until a step must read them (step_reads.py);
        # the spike rule and non-fused optimizers need the guard's verdict before every update.
        self.reads = DeferredReads(self.guard)
        self._read_every_step = bool(cfg.train.spike_sigma) or not all(map(skips_on_device, self.optimizers))
        self._completed: List[Dict[str, Any]] = []  # read records the loop has not logged yet
        # Set by fit() for its duration: every save in the loop is watched for hangs and timed for goodput.
        self._watchdog: Optional[Watchdog] = None
        self._goodput: Optional[Goodput] = None
        self.flops_per_token = model_flops_per_token(cfg.model, cfg.data.seq_len)
        self._print_layout()

    # ------------------------------------------------------------------------------------ set-up
    def _check_vocab(self) -> None:
        self.dataset.check_vocab(self.cfg.model.vocab_size)  # the largest token id in the shards
        tokenizer_vocab = self.dataset.vocab_size
        if tokenizer_vocab > self.cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size={self.cfg.model.vocab_size} is smaller than the {tokenizer_vocab} token ids "
                f"of the tokenizer in data.path={self.cfg.data.path}; set model.vocab_size>={tokenizer_vocab}"
            )

    def _open_eval_split(self) -> Optional[TokenDataset]:
        if self.cfg.eval.every == 0 or not TokenDataset(self.cfg.data.path, "train").has_split("eval"):
            return None
        return TokenDataset(self.cfg.data.path, "eval")

    def _print_layout(self) -> None:
        per_rank = gather_counts(self.parallel.local_parameter_count(), self.device)
        placement = node_placement(self.cfg)  # several hosts only: which ranks where
        if is_main_process():
            total = count_parameters(build_model(self.cfg.model, device="meta"))
            backend = resolve_backend(self.cfg.cluster.backend, self.device) if self.pmesh.enabled else "single process"
            print(format_layout(self.cfg, self.parallel.layer_ranges, per_rank, total, backend, self.device),
                  flush=True)
            if placement:
                print(placement, flush=True)

    def _prepare_run_dir(self) -> None:
        # restart (or a fresh start beside an old metrics.jsonl) moves the old run aside first.
        checkpoint_run_dir.prepare(self.run_dir, self.cfg.checkpoint.resume)

    def _write_resolved_config(self) -> None:
        """After the resume checks: a refused resume leaves the run's config.yaml as it was."""
        if is_main_process():
            (self.run_dir / RESOLVED_CONFIG).write_text(self.config_yaml)

    def _maybe_resume(self) -> None:
        if self.cfg.checkpoint.resume != "auto":
            return
        found = checkpoint_run_dir.resumable_checkpoint(self.run_dir)  # verified; falls back past corrupt ones
        if found is None:
            return
        saved_cfg = resume_config.checkpoint_train_config(found)
        resume_config.check_same_model(self.cfg, saved_cfg, found)
        resume_config.check_checkpoint_keys(resume_config.checkpoint_tensor_keys(found), self.cfg.model, found)
        built_groups = [resume_config.group_settings(opt) for opt in self.optimizers]
        if self.parallel.steps_in_engine:  # DeepSpeed: its partitions are filled from the same DCP state
            from .checkpoint import SHARDS_DIR
            from .checkpoint_deepspeed import load_into_engine

            state = load_checkpoint(found, [], None, verify=False)  # trainer.json and this rank's RNG
            load_into_engine(self.parallel, self.pmesh.fsdp_mesh, str(found / SHARDS_DIR))
        else:
            state = load_checkpoint(found, self.model_parts, self.optimizers, verify=False)
        for scheduler in self.schedulers:
            scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["data"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        if self.hf_exporter is not None:
            self.hf_exporter.catch_up(self.step, found)  # the previous job may have ended during its export
        self.resume_changes = resume_config.setting_changes(self.cfg, saved_cfg)
        if self.resume_changes:
            resume_config.apply_settings(self.optimizers, self.schedulers, built_groups, self.cfg, self.step)
        if is_main_process():
            print(f"resumed from {found} at step {self.step}", flush=True)
            for change in self.resume_changes:
                print(f"  changed on resume, applied from step {self.step}: {change}", flush=True)

    # ------------------------------------------------------------------------------------- steps
    def _global_kept_tokens(self, micro_batches: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
        kept = sum(mb["loss_mask"].sum() for mb in micro_batches).to(self.device, torch.float64)
        if self.dp_group is not None:
            dist.all_reduce(kept, group=self.dp_group)
        return kept

    def forward_backward(self, micro_batches: List[Dict[str, torch.Tensor]], kept: torch.Tensor) -> torch.Tensor:
        """Accumulate gradients of (sum of kept-token losses) / (global kept tokens); return the local sum."""
        # Data-parallel gradient reduction averages over ranks; scale back up so the result is the
        # global-batch mean, whatever the DP size.
        scale = self.dp_size / kept.clamp(min=1.0)
        return self.parallel.forward_backward(micro_batches, scale, summed_cross_entropy)

    def _sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a per-rank loss total over the pipeline (only the last stage has one) and DP ranks."""
        if self.pmesh.pp_group is not None:
            dist.all_reduce(value, group=self.pmesh.pp_group)
        if self.dp_group is not None:
            dist.all_reduce(value, group=self.dp_group)
        return value

    def _read_due(self, step: int) -> bool:
        """Whether step ``step`` reads its values (and the unread ones before it) back to the host."""
        c = self.cfg

        def every(n: int) -> bool:
            return bool(n) and step % n == 0

        return (self._read_every_step or every(c.logging.log_every) or step >= c.train.steps
                or every(c.checkpoint.every) or (self.eval_dataset is not None and every(c.eval.every)))

    def _complete_reads(self) -> None:
        """Read the unread steps (one device-to-host copy) and queue their judged records for the loop."""
        done = self.reads.complete()
        if done:
            # Goldfish counts over the steps since the last read, summed over the DP ranks.
            counts = self.loader if self.loader.batch_transform is not None else None
            done[-1].update(dropped_fraction_record(counts, self.dp_group, self.device))
            self._completed += done

    def train_step(self) -> Dict[str, Any]:
        """One optimizer step; its record holds loss, grad_norm and the guard's verdict once read."""
        started = time.perf_counter()
        micro_batches = self.loader.next_step()
        kept = self._global_kept_tokens(micro_batches)
        loss_sum = self._sum_over_ranks(self.forward_backward(micro_batches, kept))
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        # DeepSpeed reduces, clips and updates in one engine.step() (and skips a non-finite update itself).
        engine = self.parallel.steps_in_engine
        grad_norm = self.parallel.step() if engine else self.parallel.clip_gradients(max_norm)
        record: Dict[str, Any] = {"step": self.step + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        # Loss and norm are already reduced over all ranks, and NaN/Inf survive those sums, so every
        # rank holds the same values and decides alike (nonfinite.py).
        values = step_values(loss_sum / kept.clamp(min=1.0), grad_norm, kept)
        self.reads.add(record, values)
        found_inf = None
        if self._read_due(record["step"]):
            self._complete_reads()  # the guard judges this step on the host, before its update
            apply = not record.get("skipped")
        else:
            apply, found_inf = True, nonfinite_flag(values)  # the device skips a non-finite update
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            if apply and not engine:
                # Fused AdamW leaves parameters, moments and its step count alone where found_inf is 1.
                optimizer.found_inf = found_inf
                optimizer.step()
            scheduler.step()  # the schedule advances on skipped steps too (nonfinite.py)
            if not engine:  # DeepSpeed clears its own; with CPU offload AdamW's .grad are its buffers
                optimizer.zero_grad(set_to_none=True)
        self.step += 1  # skipped or not, the batch is consumed (as Megatron-LM and OLMo do)
        tokens = self.cfg.data.global_batch_size * self.cfg.data.seq_len
        self.tokens_seen += tokens
        # Host time: on a GPU the device may still be running this step when the host moves on.
        elapsed = time.perf_counter() - started
        tokens_per_s = tokens / elapsed
        world = max(self.env.world_size, 1)
        record.update({
            "tokens_seen": self.tokens_seen,
            "step_time_s": elapsed,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(self.flops_per_token * tokens_per_s, self.cfg.cluster.peak_flops, self.device, world),
        })
        return record

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over kept tokens of the first eval.batches global batches of the eval split (at most
        one pass over it: a small split is not counted twice)."""
        assert self.eval_dataset is not None
        d = self.cfg.data
        batches = eval_batches(self.eval_dataset, d.seq_len, d.global_batch_size, d.micro_batch_size,
                               self.cfg.eval.batches, dp_rank=self.dp_rank, dp_size=self.dp_size)
        for part in self.model_parts:
            part.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        kept = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro_batches in batches:
            loss_sum += self.parallel.eval_loss_sum(micro_batches, summed_cross_entropy)
            kept += sum(mb["loss_mask"].sum() for mb in micro_batches).to(self.device, torch.float64)
        for part in self.model_parts:
            part.train()
        self._sum_over_ranks(loss_sum)
        if self.dp_group is not None:
            dist.all_reduce(kept, group=self.dp_group)
        return float(loss_sum / kept.clamp(min=1.0))

    def save_checkpoint(self) -> Path:
        state = {
            "tokens_seen": self.tokens_seen,
            "data": self.loader.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "layout": asdict(self.cfg.parallel),
        }
        tensors = None
        if self.parallel.steps_in_engine:  # DeepSpeed's partitions, gathered into the layout-free keys
            from .checkpoint_deepspeed import gathered_state

            tensors = gathered_state(self.parallel, self.pmesh.fsdp_mesh)
        return self.checkpoints.save(self.step, self.model_parts, self.optimizers, state, self.config_yaml, tensors)

    # -------------------------------------------------------------------------------------- loop
    def checkpoint_now(self) -> Optional[Path]:
        """Every save of the loop: refused for a non-finite state, watched for hangs, timed for goodput."""
        self._complete_reads()  # a step the guard stops on is never saved (the loop stops on it)
        if any(r.get("halt") for r in self._completed):
            return None
        with self._watchdog.save(self.step) if self._watchdog else contextlib.nullcontext(), \
                self._goodput.phase("checkpoint_s") if self._goodput else contextlib.nullcontext():
            check_state_before_save(self.step, self.model_parts, self.optimizers, self.device,
                                    self.run_dir / "checkpoints")
            return self.save_checkpoint()

    def _log_completed(self, logger: MetricsLogger, goodput: Goodput) -> Optional[Dict[str, Any]]:
        """Account and log the steps read since the last call, in order; stop where the guard said so."""
        done, self._completed = self._completed, []
        for record in done:
            goodput.step_done(record["step"], record["step_time_s"], bool(record.get("skipped")))
            if record["step"] % self.cfg.logging.log_every == 0 or "eval_loss" in record or record.get("skipped"):
                record.update(goodput.record_fields())
                logger.log(record)
                goodput.write()  # the progress a later attempt measures its lost work against
            halt_if_asked(record)  # train.nonfinite=stop or too many consecutive skips: logged, then out
        return done[-1] if done else None

    def _report_startup(self, goodput: Goodput) -> None:
        """Once per process, after its first step: rank 0 prints the parts and keeps them in goodput.json
        (this attempt's ``startup_parts``; metrics.jsonl stays one record per step)."""
        clock, self._startup = self._startup, None
        record = clock.finish()
        if is_main_process():
            nodes = os.environ.get("SLURM_JOB_NUM_NODES", "1")
            print(f"{clock.line()} ({self.env.world_size} rank(s), {nodes} node(s))", flush=True)
            goodput.attempt["startup_parts"] = {"ranks": self.env.world_size, "nodes": nodes, **record}

    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        self._prepare_run_dir()
        self._maybe_resume()
        if self._startup is not None:
            self._startup.mark("resume")
        self._write_resolved_config()
        if self.step == 0 and cfg.train.init_from:  # no checkpoint resumed: start from given weights
            from .init_from import load_initial_weights

            load = None
            if self.parallel.steps_in_engine:
                from .checkpoint_deepspeed import load_into_engine

                def load(shards: str) -> None:
                    load_into_engine(self.parallel, self.pmesh.fsdp_mesh, shards, optimizer_state=False)
            load_initial_weights(self.model_parts, cfg.train.init_from, cfg.model, load)
        logger = MetricsLogger(cfg.logging, self.run_dir, cfg.name, json.loads(json.dumps(asdict(cfg))),
                               enabled=is_main_process())
        if self.resume_changes:
            logger.log_event({"step": self.step, "event": "resume_config_change",
                              "changes": {c.key: {"from": c.old, "to": c.new} for c in self.resume_changes}})
        goodput = self._goodput = Goodput(self.run_dir, self.step, fresh=cfg.checkpoint.resume != "auto",
                                          enabled=is_main_process())
        watchdog = self._watchdog = Watchdog(cfg.train.hang_timeout_s, cfg.train.hang_timeout_save_s,
                                             cfg.eval.batches, goodput.median_step_s)
        last: Dict[str, Any] = {}
        first_step = self.step + 1
        steps_this_run = 0
        saved_at = self.step
        ended = "error"
        if self._startup is not None:
            self._startup.skip()  # logger, goodput, watchdog: "other"
        try:
            while self.step < cfg.train.steps:
                with watchdog.step(self.step + 1), goodput.phase("train_s"):
                    record = self.train_step()
                steps_this_run += 1
                if self._startup is not None:
                    self._report_startup(goodput)
                if self.eval_dataset is not None and cfg.eval.every and self.step % cfg.eval.every == 0:
                    with watchdog.evaluation(self.step), goodput.phase("eval_s"):
                        record["eval_loss"] = self.evaluate()
                last = self._log_completed(logger, goodput) or last
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.checkpoint_now()
                    saved_at = self.step
                    if is_main_process():  # a job killed later still shows the steps it saved
                        record_trained(self.run_dir, cfg, first_step, self.step, "running")
                if cfg.train.stop_after and steps_this_run >= cfg.train.stop_after:
                    break
                with watchdog.between_steps(self.step):  # its all-reduce can hang like a step's
                    if preemption.stop_requested(self):  # Slurm's time-limit signal: checkpoint, then requeue/exit
                        break
            preemption.drain()  # an agreement still in flight (every rank started it) is finished
            self._complete_reads()  # steps left unread by a break
            last = self._log_completed(logger, goodput) or last
            if cfg.checkpoint.save_final and saved_at != self.step:
                self.checkpoint_now()
            with watchdog.save(self.step), goodput.phase("checkpoint_s"):
                self.checkpoints.wait()  # an asynchronous save still in flight is committed before exiting
            if self.hf_exporter is not None:  # rank 0 only; not watched: its length is the model's, not a hang
                with goodput.phase("checkpoint_s"):
                    self.hf_exporter.close()  # the last Hugging Face export is complete before exiting
            ended = "finished" if self.step >= cfg.train.steps else "stopped"
        except Exception as err:
            line = collective_failure_line(err, self.step, cfg.cluster.collective_timeout_minutes)
            if line:
                print(line, file=sys.stderr, flush=True)
            raise
        finally:
            watchdog.close()
            self._watchdog = self._goodput = None
            totals = goodput.write(ended=ended)
            if is_main_process():
                print(goodput.summary_line(totals), flush=True)
                if self.step >= first_step:  # which system ran which steps (systems.jsonl)
                    record_trained(self.run_dir, cfg, first_step, self.step, ended)
            logger.close()
        return last

