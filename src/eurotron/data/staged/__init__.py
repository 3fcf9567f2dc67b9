"""eurotron-prepare as Slurm jobs: the one-process preparation (``data/prepare.py``) cut into stages
whose tasks run anywhere, each writing its output atomically, so a rerun does only what is missing.

  filter     array, one task per contiguous range of the input files: parse, domain lists, opt-out,
             PII; writes the dedup keys of the documents still in the running, bucketed by key hash
  dedup      array, one task per key bucket: the keys held by two or more documents, with their holders
  resolve    one task: "first kept occurrence in corpus order" over the documents in those postings only
  tokenizer  one task: trains SentencePiece on the kept texts in corpus order (or loads the given one)
  tokenize   array, the filter's slices again: shards of the kept documents, eval split by global index
  merge      one task: manifest.json, report.json/report.md, the dataset renamed into output_dir

The result equals a one-process run on the same input (see `equal_datasets` in tests and README
"Preparing a corpus on a cluster"): the same documents kept, the same removals per reason, the same
token sequences per split in the same order, the same report figures; only shard file boundaries
(one set of shards per tokenize task) and timings differ.
"""

from .runner import STAGES, init_work_dir, run_local, run_task

__all__ = ["STAGES", "init_work_dir", "run_local", "run_task"]
