"""eurotron-prepare: raw documents → tokenizer → packed token shards (see configs/prepare.yaml).

  eurotron-prepare                                  # the shipped demo corpus → data/demo
  eurotron-prepare source.type=jsonl source.path=corpus.jsonl.gz output_dir=data/mycorpus
  eurotron-prepare source.type=parquet source.path=/scratch/p/parquet/ tokenizer.vocab_size=65536
"""

from __future__ import annotations

from typing import Any, Dict

import hydra
from omegaconf import DictConfig

from ..config import PrepareConfig, register_configs
from ..paths import config_dir
from .common import exit_on_user_error, typed_config

register_configs()


def summary(manifest: Dict[str, Any], output_dir: str) -> str:
    """A few lines on what was written, for the end of the run."""
    docs, tok, timing = manifest["documents"], manifest["tokenizer"], manifest["timing"]
    lines = [
        f"eurotron-prepare: wrote {output_dir}",
        f"  documents: {docs['read']:,} read, {docs['kept']:,} kept, {docs['skipped']['empty']:,} skipped (empty)",
        f"  tokenizer: {tok['type']}, vocab {tok['vocab_size']:,} (eos id {tok['eos_id']}), dtype {manifest['dtype']}",
    ]
    for name, split in manifest["splits"].items():
        lines.append(f"  {name}: {split['docs']:,} docs, {split['tokens']:,} tokens in {len(split['shards'])} shard(s)")
    lines.append(
        f"  time: {timing['total_s']:.1f} s ({timing['tokenizer_s']:.1f} s tokenizer); "
        f"{timing['docs_per_s']:,.0f} docs/s, {timing['tokens_per_s']:,.0f} tokens/s"
    )
    return "\n".join(lines)


def run(cfg: DictConfig) -> Dict[str, Any]:
    from ..data.prepare import prepare

    prepare_cfg: PrepareConfig = typed_config(cfg, PrepareConfig)
    manifest = prepare(prepare_cfg)
    print(summary(manifest, prepare_cfg.output_dir), flush=True)
    return manifest


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="prepare")
def main(cfg: DictConfig) -> None:
    exit_on_user_error("eurotron-prepare", lambda: run(cfg))


if __name__ == "__main__":
    main()
