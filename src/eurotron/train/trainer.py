"""The training loop: data → forward/backward over micro-batches → clip → AdamW → log → checkpoint.

Reads top to bottom like nanoGPT's step. Parallelism is applied to the model before it reaches the
trainer (DESIGN.md principle 1); the trainer only knows the data-parallel group for its batch slice
and the global kept-token count.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from ..config import ConfigError, TrainConfig
from ..data.loader import BatchLoader, TokenDataset
from ..model import build_model, model_flops_per_token
from ..parallel.env import ProcessEnv, is_main_process, process_env, select_device
from .checkpoint import CheckpointManager, latest_checkpoint, load_checkpoint
from .loss import summed_cross_entropy
from .metrics import MetricsLogger
from .optim import build_optimizer
from .schedule import build_scheduler

RESOLVED_CONFIG = "config.yaml"


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast where the device has it (precision=auto on GPUs); fp32 otherwise."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    def __init__(self, cfg: TrainConfig, config_yaml: str, env: Optional[ProcessEnv] = None) -> None:
        self.cfg = cfg
        self.config_yaml = config_yaml
        self.env = env or process_env()
        self.run_dir = Path(cfg.run_dir)
        self.device = select_device(cfg.cluster.device, self.env.local_rank)
        if cfg.cluster.cpu_threads:
            torch.set_num_threads(cfg.cluster.cpu_threads)
        # Data-parallel coordinates; a single process is DP rank 0 of 1.
        self.dp_rank, self.dp_size, self.dp_group = 0, 1, None

        self.dataset = TokenDataset(cfg.data.path, "train")
        self._check_vocab()
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, device="meta")
        self.model.to_empty(device=self.device)
        self.model.init_weights(seed=cfg.train.seed)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, cfg.train.steps)
        self.loader = BatchLoader(
            self.dataset,
            seq_len=cfg.data.seq_len,
            global_batch_size=cfg.data.global_batch_size,
            micro_batch_size=cfg.data.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            seed=cfg.data.seed,
            shuffle=cfg.data.shuffle,
        )
        self.eval_dataset = self._open_eval_split()
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints", cfg.checkpoint.keep_last, tokenizer_dir=self.dataset.tokenizer_dir
        )
        self.step = 0
        self.tokens_seen = 0
        self.flops_per_token = model_flops_per_token(cfg.model, cfg.data.seq_len)

    # ------------------------------------------------------------------------------------ set-up
    def _check_vocab(self) -> None:
        tokenizer_vocab = self.dataset.vocab_size
        if tokenizer_vocab > self.cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size={self.cfg.model.vocab_size} is smaller than the {tokenizer_vocab} token ids "
                f"of the tokenizer in data.path={self.cfg.data.path}; set model.vocab_size>={tokenizer_vocab}"
            )

    def _open_eval_split(self) -> Optional[TokenDataset]:
        if self.cfg.eval.every == 0 or not self.dataset.has_split("eval"):
            return None
        return TokenDataset(self.cfg.data.path, "eval")

    def _prepare_run_dir(self) -> None:
        if not is_main_process():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / RESOLVED_CONFIG).write_text(self.config_yaml)

    def _maybe_resume(self) -> None:
        if self.cfg.checkpoint.resume == "never":
            return
        found = latest_checkpoint(self.run_dir / "checkpoints")
        if found is None:
            return
        state = load_checkpoint(found, self.model, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["data"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        if is_main_process():
            print(f"resumed from {found} at step {self.step}", flush=True)

    # ------------------------------------------------------------------------------------- steps
    def _global_kept_tokens(self, micro_batches: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
        kept = sum(mb["loss_mask"].sum() for mb in micro_batches).to(self.device, torch.float64)
        if self.dp_group is not None:
            dist.all_reduce(kept, group=self.dp_group)
        return kept

    def forward_backward(self, micro_batches: List[Dict[str, torch.Tensor]], kept: torch.Tensor) -> torch.Tensor:
        """Accumulate gradients of (sum of kept-token losses) / (global kept tokens); return the local sum."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        # Data-parallel gradient reduction averages over ranks; scale back up so the result is the
        # global-batch mean, whatever the DP size.
        scale = self.dp_size / kept.clamp(min=1.0)
        for mb in micro_batches:
            mb = _to_device(mb, self.device)
            with autocast_context(self.cfg.train.precision, self.device):
                logits = self.model(mb["input_ids"], mb["position_ids"])
            local = summed_cross_entropy(logits, mb["labels"], mb["loss_mask"])
            (local * scale.to(local.dtype)).backward()
            loss_sum += local.detach().double()
        return loss_sum

    def train_step(self) -> Dict[str, Any]:
        started = time.perf_counter()
        micro_batches = self.loader.next_step()
        kept = self._global_kept_tokens(micro_batches)
        loss_sum = self.forward_backward(micro_batches, kept)
        if self.dp_group is not None:
            dist.all_reduce(loss_sum, group=self.dp_group)
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = self.cfg.data.global_batch_size * self.cfg.data.seq_len
        self.tokens_seen += tokens
        elapsed = time.perf_counter() - started
        tokens_per_s = tokens / elapsed
        world = max(self.env.world_size, 1)
        return {
            "step": self.step,
            "loss": float(loss_sum / kept.clamp(min=1.0)),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "kept_tokens": int(kept),
            "tokens_seen": self.tokens_seen,
            "step_time_s": elapsed,
            "tokens_per_s": tokens_per_s,
            "mfu": self.flops_per_token * tokens_per_s / (self.cfg.cluster.peak_flops * world),
        }

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over kept tokens of the first eval.batches global batches of the eval split."""
        assert self.eval_dataset is not None
        loader = BatchLoader(
            self.eval_dataset,
            seq_len=self.cfg.data.seq_len,
            global_batch_size=self.cfg.data.global_batch_size,
            micro_batch_size=self.cfg.data.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            seed=self.cfg.data.seed,
            shuffle=False,
        )
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for _ in range(self.cfg.eval.batches):
            for mb in loader.next_step():
                mb = _to_device(mb, self.device)
                with autocast_context(self.cfg.train.precision, self.device):
                    logits = self.model(mb["input_ids"], mb["position_ids"])
                total[0] += summed_cross_entropy(logits, mb["labels"], mb["loss_mask"]).double()
                total[1] += mb["loss_mask"].sum()
        self.model.train()
        if self.dp_group is not None:
            dist.all_reduce(total, group=self.dp_group)
        return float(total[0] / total[1].clamp(min=1.0))

    def save_checkpoint(self) -> Path:
        state = {
            "tokens_seen": self.tokens_seen,
            "data": self.loader.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "layout": asdict(self.cfg.parallel),
        }
        return self.checkpoints.save(self.step, self.model, self.optimizer, state, self.config_yaml)

    # -------------------------------------------------------------------------------------- loop
    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        self._prepare_run_dir()
        self._maybe_resume()
        logger = MetricsLogger(cfg.logging, self.run_dir, cfg.name, json.loads(json.dumps(asdict(cfg))),
                               enabled=is_main_process())
        last: Dict[str, Any] = {}
        steps_this_run = 0
        saved_at = self.step
        try:
            while self.step < cfg.train.steps:
                record = self.train_step()
                steps_this_run += 1
                if self.eval_dataset is not None and cfg.eval.every and self.step % cfg.eval.every == 0:
                    record["eval_loss"] = self.evaluate()
                if self.step % cfg.logging.log_every == 0 or "eval_loss" in record:
                    logger.log(record)
                last = record
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if cfg.train.stop_after and steps_this_run >= cfg.train.stop_after:
                    break
            if cfg.checkpoint.save_final and saved_at != self.step:
                self.save_checkpoint()
        finally:
            logger.close()
        return last
