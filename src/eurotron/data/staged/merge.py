"""Stage 4, one task: the tokenize tasks' shards, counts and report builders merged in corpus order
into the dataset one process would write (manifest.json, report.json, report.md), built in a
temporary sibling of output_dir and renamed into place, as `prepare` does. Shards are hard-linked
from the work directory (copied across file systems), so a failed merge can simply run again."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, List

from ...config import PrepareConfig
from ..filters.report import ReportBuilder
from ..manifest import TOKENIZER_DIR
from ..prepare import (check_output, move_into_place, report_header, source_name, stage_settings, staging_dir,
                       timing_figures, write_dataset)
from ..split_writer import SplitCounts, finish_splits
from ..tokenizer import Tokenizer
from .tokenize import STATE_FILE


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_merge(cfg: PrepareConfig, tokenize_dirs: List[Path], tokenizer_dir: Path, tokenizer_info: Dict[str, Any],
              seconds: Dict[str, float]) -> Dict[str, Any]:
    out = Path(cfg.output_dir).expanduser().resolve()
    check_output(out, cfg.overwrite)
    settings = stage_settings(cfg)
    names = ["train", "eval"] if cfg.eval_every_nth_document else ["train"]
    with staging_dir(out) as tmp:
        shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
        tokenizer = Tokenizer.load(tmp / TOKENIZER_DIR)
        tokenizer.training_chars = tokenizer_info.get("training_chars")
        report = ReportBuilder(report_header(cfg, out, settings))
        counts = SplitCounts(docs={name: 0 for name in names})
        shards: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
        for directory in tokenize_dirs:  # task order = corpus order
            with open(directory / STATE_FILE, "rb") as handle:
                state = pickle.load(handle)
            report.merge(state["report"])
            counts.merge(state["counts"])
            for name, entries in state["shards"].items():
                (tmp / name).mkdir(exist_ok=True)
                for entry in entries:
                    for key in ("bin", "idx"):
                        _link(directory / name / entry[key], tmp / name / entry[key])
                shards[name].extend(entries)
        for name in names:
            (tmp / name).mkdir(exist_ok=True)
        splits, documents = finish_splits(tmp, shards, counts, report, source_name(cfg), cfg.filters.enabled)
        # Task seconds, summed over tasks (they may have run in parallel).
        timing = timing_figures(seconds["tokenizer"], seconds["tokenizer"] + seconds["tokenize"], splits, documents)
        timing["total_s"] = round(sum(seconds.values()), 3)
        timing["task_seconds"] = {stage: round(s, 3) for stage, s in seconds.items()}
        write_dataset(cfg, tmp, tokenizer, splits, documents, timing, report)
        move_into_place(tmp, out, cfg.overwrite)
    return {"output_dir": str(out), "kept": documents["kept"]}
