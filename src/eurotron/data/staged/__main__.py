"""python -m eurotron.data.staged <stage> <work_dir> [--task N] [--workers N]: one task of a staged
prepare (what the Slurm scripts run; `--task` defaults to $SLURM_ARRAY_TASK_ID, else 0)."""

from __future__ import annotations

import argparse
import os
import sys

from ...errors import UserError
from .runner import STAGES, run_task


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eurotron.data.staged", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("work_dir")
    parser.add_argument("--task", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")))
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: num_workers)")
    args = parser.parse_args(argv)
    try:
        ran = run_task(args.work_dir, args.stage, args.task, args.workers)
    except UserError as err:
        print(f"eurotron-prepare {args.stage} task {args.task}: error: {err}", file=sys.stderr)
        return 2
    print(f"eurotron-prepare {args.stage} task {args.task}: {'done' if ran else 'already done, skipped'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
