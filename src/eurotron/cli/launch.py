"""eurotron-launch: compose a training config, check it against a Slurm system, write the run
directory (resolved config + job script) and submit it; the job trains that saved config as is.

  eurotron-launch cluster=local experiment=demo                           # this machine's Slurm, 4 ranks
  eurotron-launch experiment=lumi_llama3_8b cluster.slurm.account=project_465000000 \\
      data.path=/flash/project_465000000/tokens launch.dry_run=true       # print the script only
  eurotron-launch experiment=alps_apertus_70b launch.chain=4 ...          # 4 jobs, afterany-chained
  eurotron-launch -m experiment=demo cluster=local optim.lr=1e-3,3e-3    # a sweep: one job per point
  eurotron-launch experiment=leonardo_llama3_8b run_dir=<copied run dir> launch.continue_run=true ...
                                                                          # continue a run from another system
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Dict

import hydra
from omegaconf import DictConfig

from ..config import TrainConfig
from ..launch.render import render_job
from ..launch.moving import check_continue
from ..launch.run_files import CONFIG_NAME, SCRIPT_NAME
from ..launch.submit import SubmitError, check_run_dir, sbatch_commands, submit_chain, write_run_dir
from ..launch.sweep import SweepPoint, record_point
from ..launch.validation import check_launch
from ..paths import config_dir
from ..plan.memory import GiB, estimate_memory
from ..plan.search import evaluate
from ..plan.throughput import PlanError
from ..train.checkpoint_retention import complete_checkpoints
from ..train.systems import append_record, layout_of
from .common import check_experiment_names, exit_on_user_error, resolved_yaml, sweep_context, typed_config

APP = "eurotron-launch"


def run(cfg: DictConfig) -> Dict[str, Any]:
    sweep = sweep_context()
    if sweep is not None and not sweep.run_dir_overridden:
        cfg.run_dir = sweep.point_dir  # every point of a sweep gets <sweep dir>/<n>
    cfg.run_dir = str(Path(str(cfg.run_dir)).expanduser().absolute())
    train_cfg: TrainConfig = typed_config(cfg, TrainConfig)
    dry_run = train_cfg.launch.dry_run
    plan = check_launch(train_cfg, check_data=not dry_run)
    run_dir = Path(train_cfg.run_dir)
    job = render_job(train_cfg, run_dir, Path.cwd(), plan)
    config_yaml = resolved_yaml(cfg)
    shape = (f"{plan.nodes} node(s) x {plan.ranks_per_node} rank(s) = {plan.world_size}, "
             f"{plan.tasks_per_node} task(s) per node ({plan.pattern})")
    if train_cfg.cluster.gpu_memory_gb > 0:
        peak = estimate_memory(train_cfg).peak
        shape += (f"; about {peak.total_bytes / GiB:.1f} of {train_cfg.cluster.gpu_memory_gb:g} GiB per GPU "
                  f"(pp rank {peak.pp_rank})")
    result: Dict[str, Any] = {"run_dir": str(run_dir), "script": job.script, "job_ids": [], "plan": plan}
    if train_cfg.launch.continue_run and not train_cfg.launch.force:
        _check_continue(train_cfg, run_dir)
    if dry_run:
        for name, text in job.files.items():
            print(f"# ---- {run_dir / name} ----\n{text}", end="", flush=True)
        print(job.script, end="", flush=True)
        commands = sbatch_commands(run_dir / SCRIPT_NAME, train_cfg.launch.chain)
        print(f"{APP}: dry run ({shape}); would write {run_dir} and run: "
              + "; ".join(" ".join(c) for c in commands), file=sys.stderr, flush=True)
        print(f"{APP}: {_plan_line(train_cfg)}", file=sys.stderr, flush=True)
    else:
        if shutil.which("sbatch") is None:
            raise SubmitError("sbatch is not on PATH: run eurotron-launch on a Slurm login node "
                              "(or scripts/slurm_local.sh start here), or pass launch.dry_run=true")
        check_run_dir(run_dir, config_yaml, train_cfg.launch.force or train_cfg.launch.continue_run)
        ckpts = complete_checkpoints(run_dir / "checkpoints")
        script = write_run_dir(job, config_yaml)
        submission = submit_chain(script, train_cfg.launch.chain, cwd=Path.cwd())
        result["job_ids"] = submission.job_ids
        append_record(run_dir, {"event": "launch", "system": train_cfg.cluster.name,
                                "layout": layout_of(train_cfg.parallel), "world_size": plan.world_size,
                                "nodes": plan.nodes, "job_ids": submission.job_ids,
                                "from_step": ckpts[-1][0] if ckpts else 0,
                                "continued": train_cfg.launch.continue_run})
        chained = " (each after the previous one ends)" if len(submission.job_ids) > 1 else ""
        print(f"{APP}: submitted job {', '.join(submission.job_ids)}{chained}: {shape}\n"
              f"  run dir: {run_dir}\n  logs:    {run_dir / 'logs'}\n  {_plan_line(train_cfg)}", flush=True)
    if sweep is not None:
        record_point(sweep.sweep_dir, SweepPoint(num=sweep.num, overrides=sweep.overrides, run_dir=str(run_dir),
                                                 job_ids=result["job_ids"], dry_run=dry_run))
    return result


def _check_continue(cfg: TrainConfig, run_dir: Path) -> None:
    """launch.continue_run: the run dir holds a run this config may continue (launch/moving.py)."""
    from ..train.resume_config import checkpoint_train_config

    if not (run_dir / CONFIG_NAME).exists():
        raise SubmitError(f"launch.continue_run=true: {run_dir} holds no run (no config.yaml); copy the run "
                          f"directory from the other system there (config.yaml, checkpoints/, metrics.jsonl), "
                          f"or drop launch.continue_run to start a new run")
    ckpt, changes = check_continue(checkpoint_train_config(run_dir), cfg, run_dir)
    print(f"{APP}: continuing {run_dir} from {ckpt.name} on {cfg.cluster.name} ({layout_of(cfg.parallel)}); "
          f"changed: " + ("; ".join(changes) or "nothing"), file=sys.stderr, flush=True)


def _plan_line(cfg: TrainConfig) -> str:
    """eurotron-plan's line for exactly what is submitted (speed, memory, cost of plan.tokens)."""
    if cfg.cluster.device == "cpu" or cfg.cluster.gpus_per_node <= 0:
        return "plan: no throughput estimate for a CPU cluster"
    try:
        return f"plan ({cfg.plan.tokens:.3g} tokens): " + evaluate(cfg, cfg.plan.tokens).line()
    except PlanError as err:
        return f"plan: no throughput estimate ({err})"


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="launch")
def hydra_main(cfg: DictConfig) -> None:
    exit_on_user_error(APP, lambda: run(cfg))


def main() -> None:
    exit_on_user_error(APP, lambda: check_experiment_names(sys.argv[1:]))
    hydra_main()


if __name__ == "__main__":
    main()
