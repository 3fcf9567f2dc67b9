"""eurotron-status: where a run or a sweep stands, from its run directory and Slurm's commands.

  eurotron-status runs/demo                 # Slurm state of its jobs, step, losses, speed, goodput,
                                            # last complete checkpoint, ETA at the current speed
  eurotron-status runs/lr_sweep             # a sweep (sweep.json): one row per point, and
                                            # runs/lr_sweep/loss_curves.png with every point's curve
  eurotron-status runs/demo --json          # the same as JSON

Works on a login node: reads files and runs squeue/sacct (scontrol where accounting is off); no GPU,
no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import UserError
from ..launch.nodes import format_seconds
from ..launch.status import RunStatus, is_sweep, run_status, sweep_status
from ..train.metrics import METRICS_FILE, loss_points, read_metrics
from ..train.systems import steps_by_system
from .common import exit_on_user_error

APP = "eurotron-status"
CURVES_PNG = "loss_curves.png"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=APP, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run_dir", type=Path, help="a run directory (config.yaml) or a sweep directory (sweep.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-slurm", action="store_true", help="do not ask Slurm for the jobs' states")
    p.add_argument("--no-plot", action="store_true", help="for a sweep: do not write loss_curves.png")
    return p.parse_args(argv)


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _jobs(status: RunStatus) -> str:
    if not status.jobs:
        return "none recorded (not launched with eurotron-launch?)"
    return ", ".join(f"{j.job_id} {j.state}" + (f" {j.elapsed}" if j.elapsed else "") for j in status.jobs)


def _eta(status: RunStatus) -> str:
    if status.finished:
        return "done"
    return "-" if status.eta_s is None else format_seconds(int(status.eta_s))


def format_run(s: RunStatus) -> str:
    steps = f"{_num(s.step, 'd')} / {_num(s.total_steps, 'd')}"
    evals = f"{_num(s.eval_loss, '.4f')}" + (f" (step {s.eval_step})" if s.eval_step else "")
    lines = [
        f"run dir     {s.run_dir} ({s.name} on {s.cluster or '?'})",
        f"jobs        {_jobs(s)}",
        f"step        {steps}",
        f"loss        {_num(s.loss, '.4f')}    eval loss {evals}",
        f"speed       {_num(s.tokens_per_s, ',.0f')} tokens/s, {_num(s.seconds_per_step, '.3g')} s/step (wall)",
        f"goodput     {_num(s.goodput_pct, '.1f')}%",
        f"checkpoint  {s.checkpoint or 'none complete'}",
        f"ETA         {_eta(s)}" + ("" if s.finished or s.eta_s is None else " at the current speed"),
    ]
    lines += [f"system      {line}" for line in steps_by_system(s.systems)]
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_sweep(points: List[RunStatus]) -> str:
    header = ["point", "jobs", "step", "loss", "eval loss", "tokens/s", "goodput", "checkpoint", "ETA"]
    rows = [[_short(p.label), "; ".join(f"{j.job_id} {j.state}" for j in p.jobs) or "-",
             f"{_num(p.step, 'd')}/{_num(p.total_steps, 'd')}", _num(p.loss, ".4f"), _num(p.eval_loss, ".4f"),
             _num(p.tokens_per_s, ",.0f"), _num(p.goodput_pct, ".1f"), p.checkpoint or "-", _eta(p)]
            for p in points]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def plot_sweep(points: List[RunStatus], out: Path) -> Optional[Path]:
    """Every point's train loss (solid) and eval loss (markers) in one PNG; None when none has metrics."""
    curves = []
    for p in points:
        metrics = Path(p.run_dir) / METRICS_FILE
        if metrics.exists():
            curves.append((_short(p.label, 40), *loss_points(read_metrics(metrics))))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, train, evals in curves:
        line = ax.plot(*zip(*train), label=label)[0] if train else None
        if evals:
            ax.plot(*zip(*evals), "o", color=line.get_color() if line else None,
                    label=None if line else f"{label} (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token); dots: eval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> None:
    path = args.run_dir.expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass a run directory or a sweep directory")
    query = not args.no_slurm
    if is_sweep(path):
        points = sweep_status(path, query)
        png = None if args.no_plot else plot_sweep(points, path / CURVES_PNG)
        if args.json:
            print(json.dumps({"sweep_dir": str(path), "points": [p.to_json() for p in points],
                              "loss_curves": str(png) if png else None}, indent=2))
        else:
            print(f"sweep {path}: {len(points)} point(s)\n{format_sweep(points)}")
            print(f"loss curves: {png}" if png else "loss curves: no point has logged a step yet")
        return
    status = run_status(path, query)
    print(json.dumps(status.to_json(), indent=2) if args.json else format_run(status))


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    exit_on_user_error(APP, lambda: run(args))


if __name__ == "__main__":
    main()
