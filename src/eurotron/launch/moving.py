"""launch.continue_run: continue a run directory under another system's config, from its checkpoint.

Checkpoints resume into any layout with the data position (DESIGN.md principle 6), so a run may move
to another cluster config (cluster.*), layout (parallel.*, data.micro_batch_size), launch and logging
settings, and to where the data and run dir live there. What resume allows beyond that
(train/resume_config.py: optimizer and schedule settings, applied from the resumed step on) is
allowed here too; everything else would change the run itself and is refused, key by key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..config import TrainConfig
from ..errors import UserError
from ..train.checkpoint_retention import complete_checkpoints

# Keys (dotted prefixes) that say where and how the run executes, not what it computes.
MOVABLE_PREFIXES = ("cluster.", "parallel.", "launch.", "plan.", "logging.", "checkpoint.", "eval.", "generate.")
MOVABLE_KEYS = ("name", "run_dir", "data.path", "data.micro_batch_size", "data.verify_checksums",
                "train.precision", "train.stop_after", "train.init_from", "train.hang_timeout_s",
                "train.hang_timeout_save_s", "train.nonfinite", "train.max_nonfinite_steps")


def _flat(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict):
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _comparable(cfg: TrainConfig) -> Dict[str, Any]:
    flat = _flat(dataclasses.asdict(cfg))
    # A blend's sources may live elsewhere on the new system; their order and weights are the stream.
    flat["data.blend"] = [b["weight"] for b in flat.get("data.blend") or []]
    return flat


def _movable(key: str) -> bool:
    return key in MOVABLE_KEYS or key.startswith(MOVABLE_PREFIXES)


def check_continue(saved: TrainConfig, new: TrainConfig, run_dir: Path) -> Tuple[Path, List[str]]:
    """The checkpoint the continued job starts from and the differing keys (for the console); raises
    UserError naming every key that may not change, or when there is nothing to continue."""
    from ..train import resume_config  # the resume's own rules (imports torch: only when continuing)

    ckpts = complete_checkpoints(Path(run_dir) / "checkpoints")
    if not ckpts:
        raise UserError(f"launch.continue_run=true: {run_dir} holds no complete checkpoint to continue from; "
                        f"copy the run's checkpoints/ there, or drop launch.continue_run to start the run")
    if new.checkpoint.resume != "auto":
        raise UserError(f"launch.continue_run=true needs checkpoint.resume=auto (got {new.checkpoint.resume!r})")
    ckpt = ckpts[-1][1]
    resume_config.check_same_model(new, saved, ckpt)  # model shape and behaviour: resume's rule
    resumable = {c.key for c in resume_config.setting_changes(new, saved)}
    old, ours = _comparable(saved), _comparable(new)
    differing = sorted(k for k in old.keys() | ours.keys() if old.get(k) != ours.get(k))
    refused = [k for k in differing if not k.startswith("model.") and not _movable(k) and k not in resumable]
    if refused:
        detail = "\n  ".join(f"{k}={ours.get(k)!r} here but {old.get(k)!r} in {run_dir}/config.yaml" for k in refused)
        raise UserError(
            f"launch.continue_run=true: the run in {run_dir} would change, not just move\n  {detail}\n"
            f"A moved run may change cluster.*, parallel.*, launch.*, logging.*, checkpoint.*, eval.*, where its "
            f"data and run dir live, data.micro_batch_size, and what a resume allows (optimizer and schedule "
            f"settings). Drop these overrides, or start a new run in another run_dir with train.init_from={ckpt}")
    return ckpt, [f"{k}: {old.get(k)!r} -> {ours.get(k)!r}" for k in differing]
