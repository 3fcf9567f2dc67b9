"""eurotron-prepare: raw documents → tokenizer → packed token shards (see configs/prepare.yaml).

  eurotron-prepare                                  # the shipped demo corpus → data/demo
  eurotron-prepare source.type=jsonl source.path=corpus.jsonl.gz output_dir=data/mycorpus
  eurotron-prepare source.type=parquet source.path=/scratch/p/parquet/ tokenizer.vocab_size=65536
  eurotron-prepare source.type=jsonl source.path=crawl/ filters.snapshot=/scratch/p/optout_2025_01 num_workers=16
  eurotron-prepare launch=true cluster=lumi cluster.slurm.account=project_465000001 staged.partition=small \
      source.type=jsonl source.path=/scratch/p/crawl/ output_dir=/scratch/p/tokens/crawl staged.tasks=200
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import hydra
from omegaconf import DictConfig

from ..config import PrepareConfig, register_configs
from ..paths import config_dir
from .common import exit_on_user_error, typed_config

register_configs()


def summary(manifest: Dict[str, Any], output_dir: str) -> str:
    """A few lines on what was written, for the end of the run."""
    docs, tok, timing = manifest["documents"], manifest["tokenizer"], manifest["timing"]
    bad = {kind: n for kind, n in docs["skipped"].items() if kind != "empty" and n}
    lines = [
        f"eurotron-prepare: wrote {output_dir}",
        f"  documents: {docs['read']:,} read, {docs['kept']:,} kept, {docs['skipped']['empty']:,} skipped (empty)"
        + (f", {sum(bad.values()):,} skipped (bad: " + ", ".join(f"{k} {n:,}" for k, n in bad.items()) + ")"
           if bad else ""),
        f"  tokenizer: {tok['type']}, vocab {tok['vocab_size']:,} (eos id {tok['eos_id']}), dtype {manifest['dtype']}",
    ]
    lines += _removals(output_dir, manifest)
    for name, split in manifest["splits"].items():
        lines.append(f"  {name}: {split['docs']:,} docs, {split['tokens']:,} tokens in {len(split['shards'])} shard(s)")
    lines.append(
        f"  time: {timing['total_s']:.1f} s ({timing['tokenizer_s']:.1f} s tokenizer); "
        f"{timing['docs_per_s']:,.0f} docs/s, {timing['tokens_per_s']:,.0f} tokens/s"
    )
    return "\n".join(lines)


def _removals(output_dir: str, manifest: Dict[str, Any]) -> List[str]:
    """What the filters removed and why, from report.json (nothing when there is no report)."""
    info = manifest.get("report")
    path = Path(output_dir) / info["json"] if info else None
    if path is None or not path.is_file():
        return []
    report = json.loads(path.read_text())
    if not report.get("filters", {}).get("enabled"):
        return [f"  report: {Path(output_dir) / info['markdown']}"]
    tokens_in = report["tokens"]["in"] or 1
    lines = [f"  removed: {report['documents']['removed']:,} documents, {report['tokens']['removed']:,} tokens "
             f"({100 * report['tokens']['removed'] / tokens_in:.1f}% of {report['tokens']['in']:,})"]
    for reason, entry in report["removed"].items():
        detail = entry.get("by_agent") or entry.get("by_signal") or entry.get("by_case") or {}
        more = " (" + ", ".join(f"{k} {v:,}" for k, v in list(detail.items())[:6]) + ")" if detail else ""
        domains = ", ".join(d["domain"] for d in entry["top_domains"][:3])
        lines.append(f"    {reason:<15}{entry['docs']:>9,}  {entry['description']}{more}; top: {domains}")
    robots = report.get("optout_signals", {}).get("robots", {})
    if robots.get("missing", 0) * 2 > sum(robots.values()) > 0:
        lines.append(f"  note: {robots['missing']:,} of {sum(robots.values()):,} documents come from origins the "
                     f"snapshot does not hold (policy: {report['policy']['missing']}); is filters.snapshot the "
                     f"right one for this source?")
    semantics = report.get("robots_semantics")
    if semantics and semantics["documents_decided_differently"]:
        other = next(k[len("removed_only_by_"):] for k in semantics if k.startswith("removed_only_by_")
                     and not k.endswith(semantics["used"]))
        lines.append(f"  robots.txt: {semantics['documents_decided_differently']:,} documents would be decided "
                     f"differently under robots_semantics={other} (report.json robots_semantics)")
    pii = report["pii"]
    if pii["replaced"]:
        lines.append("  PII replaced: " + ", ".join(f"{k} {v:,}" for k, v in sorted(
            pii["replaced"].items(), key=lambda kv: -kv[1])) + f" (in {pii['documents']:,} kept documents)")
    lines.append(f"  report: {Path(output_dir) / info['markdown']}")
    return lines


def launch_summary(submitted: Dict[str, Any], output_dir: str) -> str:
    from ..data.staged.slurm import array_spec

    lines = [f"eurotron-prepare: staged preparation of {output_dir}, work directory {submitted['work_dir']}"]
    if not submitted["jobs"]:
        lines.append("  every task is done already; nothing submitted")
    for job in submitted["jobs"]:
        lines.append(f"  {job['stage']:<10} job {job['job_id']}  tasks {array_spec(job['tasks'], 0)}")
    if submitted["jobs"]:
        ids = ",".join(job["job_id"] for job in submitted["jobs"])
        lines.append(f"  submitted job {ids}; logs in {submitted['work_dir']}/logs. If a task fails, run this "
                     f"same command again: it submits only the unfinished tasks")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Dict[str, Any]:
    from ..data.prepare import prepare

    prepare_cfg: PrepareConfig = typed_config(cfg, PrepareConfig)
    if prepare_cfg.launch:
        from ..data.staged.slurm import launch_staged

        submitted = launch_staged(prepare_cfg)
        print(launch_summary(submitted, prepare_cfg.output_dir), flush=True)
        return submitted
    manifest = prepare(prepare_cfg)
    print(summary(manifest, prepare_cfg.output_dir), flush=True)
    return manifest


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="prepare")
def main(cfg: DictConfig) -> None:
    exit_on_user_error("eurotron-prepare", lambda: run(cfg))


if __name__ == "__main__":
    main()
