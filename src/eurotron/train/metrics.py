"""Training metrics to the console, <run_dir>/metrics.jsonl, wandb, and a loss-curve PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..config import LoggingConfig

METRICS_FILE = "metrics.jsonl"


def wandb_mode(requested: str) -> str:
    """auto → online with an API key, else offline (compute nodes usually have no internet)."""
    if requested != "auto":
        return requested
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    """Writes on the main process only; other ranks get a logger that does nothing."""

    def __init__(self, cfg: LoggingConfig, run_dir: Path, run_name: str, config: Dict[str, Any],
                 enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.wandb:
            import wandb

            mode = wandb_mode(cfg.wandb_settings.mode)
            self._wandb = wandb.init(
                project=cfg.wandb_settings.project,
                entity=cfg.wandb_settings.entity,
                name=run_name,
                dir=str(run_dir),
                mode=mode,
                config=config,
                resume="allow",
            )

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = finite_or_none(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self._wandb is not None:
            # wandb has no null: a missing value (a skipped step's NaN) is left out of that step.
            self._wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        if self.cfg.console:
            print(format_record(record), flush=True)

    def log_event(self, record: Dict[str, Any]) -> None:
        """A non-metric line (``event`` names it, ``step`` says when it took effect): metrics.jsonl only."""
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> Optional[Path]:
        if not self.enabled:
            return None
        if self._wandb is not None:
            self._wandb.finish()
        if self.cfg.plot_loss_curve and self.path.exists():
            return plot_loss_curve(self.path, self.path.parent / "loss_curve.png")
        return None


def finite_or_none(value: Any) -> Any:
    """NaN and +-Inf become None (JSON null): metrics.jsonl stays strict JSON that any parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def format_record(record: Dict[str, Any]) -> str:
    parts = [f"step {record['step']:>6d}"]
    for key, fmt in (("loss", ".4f"), ("eval_loss", ".4f"), ("lr", ".2e"), ("grad_norm", ".3f"),
                     ("tokens_per_s", ",.0f"), ("mfu", ".1%")):
        if key in record:
            parts.append(f"{key} {record[key]:{fmt}}" if record[key] is not None else f"{key} n/a")
    if record.get("skipped"):
        parts.append(f"SKIPPED ({record.get('skip_reason')})")
    return " | ".join(parts)


def read_metrics(path: Path) -> list:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def step_records(records: list) -> list:
    """The metric records in step order; a resumed run appends, so the last record of a step wins
    (a curve without back-tracks)."""
    by_step = {r["step"]: r for r in records if "event" not in r}
    return [by_step[s] for s in sorted(by_step)]


def loss_points(records: list) -> tuple:
    """(train, eval) lists of (step, loss); skipped steps (null loss, or a spike kept out of the update)
    are left off the train curve."""
    ordered = step_records(records)
    train = [(r["step"], r["loss"]) for r in ordered if r.get("loss") is not None and not r.get("skipped")]
    evals = [(r["step"], r["eval_loss"]) for r in ordered if r.get("eval_loss") is not None]
    return train, evals


def plot_loss_curve(metrics_path: Path, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_points(read_metrics(metrics_path))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
