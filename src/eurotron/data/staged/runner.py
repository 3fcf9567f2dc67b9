"""Runs one task of a staged prepare (what each Slurm array task does), or all of them in this
process (`run_local`: tests, small corpora). Every task reads the saved config and plan of the work
directory, skips itself when its marker says it is done, and reads only finished tasks' outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...config import PrepareConfig, to_object
from ..errors import DataError
from ..manifest import TOKENIZER_DIR, read_manifest
from ..prepare import check_config, check_output
from ..readers import source_files
from .dedup import removed_file, run_partition, run_resolve
from .filter import run_filter
from .merge import run_merge
from .slicing import slice_files
from .tokenize import codes_for, run_tokenize, run_tokenizer
from .workdir import CONFIG_FILE, PLAN_FILE, WorkDir, config_yaml, default_work_dir

STAGES = ("filter", "dedup", "resolve", "tokenizer", "tokenize", "merge")
# Test hook: "<stage>:<task>" fails that task once (its first attempt), as a killed task would.
FAIL_ONCE_ENV = "EUROTRON_STAGED_FAIL_ONCE"


def task_count(stage: str, plan: Dict[str, Any]) -> int:
    return {"filter": plan["tasks"], "tokenize": plan["tasks"], "dedup": plan["dedup_tasks"]}.get(stage, 1)


def staged_problems(cfg: PrepareConfig) -> List[str]:
    s, problems = cfg.staged, []
    if s.tasks < 1:
        problems.append(f"staged.tasks={s.tasks}: must be >= 1 (filter and tokenize tasks, one slice of the input files each)")
    if s.dedup_tasks < 1:
        problems.append(f"staged.dedup_tasks={s.dedup_tasks}: must be >= 1 (tasks sharing the dedup keys)")
    return problems


def init_work_dir(cfg: PrepareConfig) -> WorkDir:
    """Check `cfg`, slice the input and save both in the work directory; the same config again
    continues the work there, a different one is refused."""
    cfg = to_object(cfg, PrepareConfig)
    check_config(cfg)
    problems = staged_problems(cfg)
    if problems:
        raise DataError("invalid staged prepare config:\n  " + "\n  ".join(problems))
    work = WorkDir(default_work_dir(cfg))
    text = config_yaml(cfg)
    saved = work.root / CONFIG_FILE
    if saved.is_file():
        if saved.read_text() != text:
            raise DataError(f"staged.work_dir={work.root} holds a staged prepare of a different config "
                            f"({saved}); rerun with that config to continue it, or choose another staged.work_dir "
                            f"(or delete it to start again)")
        return work
    if not (work.root / "merge" / "00000.done").exists():
        check_output(Path(cfg.output_dir).expanduser().resolve(), cfg.overwrite)  # before hours of work
    files = source_files(cfg.source)
    work.root.mkdir(parents=True, exist_ok=True)
    work.write_json(PLAN_FILE, {"tasks": cfg.staged.tasks, "dedup_tasks": cfg.staged.dedup_tasks,
                                "slices": slice_files(files, cfg.staged.tasks)})
    (work.root / CONFIG_FILE).write_text(text)  # last: a work dir with a config is complete
    return work


def _fail_once(work: WorkDir, stage: str, task: int) -> None:
    if os.environ.get(FAIL_ONCE_ENV) != f"{stage}:{task}":
        return
    flag = work.root / f".failed_once_{stage}_{task}"
    if not flag.exists():
        flag.touch()
        raise RuntimeError(f"{FAIL_ONCE_ENV}={stage}:{task}: this task fails on its first attempt (test hook)")


def run_task(work_dir: Path | str, stage: str, task: int, num_workers: Optional[int] = None) -> bool:
    """Run one task unless it is done; True when it ran."""
    if stage not in STAGES:
        raise DataError(f"stage {stage!r}: must be one of {', '.join(STAGES)}")
    work = WorkDir(work_dir)
    cfg, plan = work.load_config(), work.plan()
    if not 0 <= task < task_count(stage, plan):
        raise DataError(f"{stage} task {task}: this staged prepare has tasks 0..{task_count(stage, plan) - 1}")
    if work.done(stage, task):
        return False
    workers = cfg.num_workers if num_workers is None else num_workers
    info: Dict[str, Any] = {}
    started, cpu = time.perf_counter(), time.process_time()
    with work.task_output(stage, task, info) as out:
        _fail_once(work, stage, task)
        info.update(_STAGE_FUNCS[stage](cfg, plan, work, task, out, workers))
        info["seconds"] = round(time.perf_counter() - started, 3)
        info["cpu_seconds"] = round(time.process_time() - cpu, 3)  # this process only (num_workers=0: all)
    return True


def _filter(cfg, plan, work, task, out, workers):
    return run_filter(cfg, plan["slices"][task], out, workers)


def _candidates(work: WorkDir, plan) -> List[int]:
    return [work.info("filter", t)["candidates"] for t in range(plan["tasks"])]


def _dedup(cfg, plan, work, task, out, workers):
    counts = _candidates(work, plan)
    first = np.cumsum([0, *counts[:-1]]).tolist()
    return run_partition([work.task_dir("filter", t) for t in range(plan["tasks"])], first, task, out)


def _resolve(cfg, plan, work, task, out, workers):
    for j in range(plan["dedup_tasks"]):
        work.info("dedup", j)  # all finished
    d = cfg.filters.dedup
    return run_resolve([work.task_dir("dedup", j) for j in range(plan["dedup_tasks"])], _candidates(work, plan),
                       cfg.filters.enabled and d.exact, cfg.filters.enabled and d.near, out)


def _codes(work: WorkDir, plan, task: int) -> np.ndarray:
    candidates = work.info("resolve", 0)["candidates_per_task"][task]
    return codes_for(np.load(work.task_dir("resolve", 0) / removed_file(task)), candidates)


def _tokenizer(cfg, plan, work, task, out, workers):
    work.info("resolve", 0)
    codes = [_codes(work, plan, t) for t in range(plan["tasks"])]
    return run_tokenizer(cfg, plan["slices"], codes, out, workers)


def _tokenize(cfg, plan, work, task, out, workers):
    work.info("tokenizer", 0)
    kept = work.info("resolve", 0)["kept_per_task"]
    return run_tokenize(cfg, plan["slices"][task], _codes(work, plan, task), sum(kept[:task]),
                        work.task_dir("tokenizer", 0) / TOKENIZER_DIR, task, out, workers)


def _merge(cfg, plan, work, task, out, workers):
    seconds: Dict[str, float] = {}
    for stage in STAGES[:-1]:
        seconds[stage] = sum(work.info(stage, t).get("seconds", 0.0) for t in range(task_count(stage, plan)))
    return run_merge(cfg, [work.task_dir("tokenize", t) for t in range(plan["tasks"])],
                     work.task_dir("tokenizer", 0) / TOKENIZER_DIR, work.info("tokenizer", 0), seconds)


_STAGE_FUNCS = {"filter": _filter, "dedup": _dedup, "resolve": _resolve, "tokenizer": _tokenizer,
                "tokenize": _tokenize, "merge": _merge}


def run_local(cfg: PrepareConfig) -> Tuple[Dict[str, Any], List[Tuple[str, int]]]:
    """Every pending task in this process, stage by stage; (the manifest, the tasks that ran)."""
    work = init_work_dir(cfg)
    plan = work.plan()
    ran = []
    for stage in STAGES:
        for task in range(task_count(stage, plan)):
            if run_task(work.root, stage, task):
                ran.append((stage, task))
    return read_manifest(work.load_config().output_dir), ran
