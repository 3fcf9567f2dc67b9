"""The kept documents of decided batches → train/eval shards, with the counts the manifest and the
report need. One-process prepare feeds one `SplitWriter` the whole corpus; the staged prepare
(`data/staged/`) feeds one per slice, starting at the slice's global kept index so every n-th kept
document of the *corpus* goes to eval, and merges their `SplitCounts` afterwards."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bad_records import EXAMPLES, RecordTally
from .errors import DataError
from .filters.report import ReportBuilder
from .filters.stage import BatchResult
from .shards import ShardWriter


@dataclass
class SplitCounts:
    """What `SplitWriter` counted, mergeable in corpus order."""

    docs: Dict[str, int]
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    tally_kinds: Counter = field(default_factory=Counter)
    tally_examples: List[Tuple[str, str]] = field(default_factory=list)

    def merge(self, later: "SplitCounts") -> None:
        for name, n in later.docs.items():
            self.docs[name] = self.docs.get(name, 0) + n
        self.kept += later.kept
        self.skipped.update(later.skipped)
        self.languages.update(later.languages)
        self.tally_kinds.update(later.tally_kinds)
        self.tally_examples = (self.tally_examples + later.tally_examples)[:EXAMPLES]

    def tally(self) -> RecordTally:
        tally = RecordTally()
        tally.kinds, tally.examples, tally.finished = Counter(self.tally_kinds), list(self.tally_examples), True
        return tally


class SplitWriter:
    def __init__(self, root: Path, every: int, vocab_size: int, shard_tokens: int, report: ReportBuilder,
                 kept_before: int = 0, prefix: str = "") -> None:
        self.every, self.report, self.kept_before = every, report, kept_before
        names = ["train", "eval"] if every else ["train"]
        # prefix: a staged task's shards get unique names (train_t00003_00000) in the merged split.
        self.writers = {name: ShardWriter(root / name, name + prefix, vocab_size, shard_tokens) for name in names}
        self.counts = SplitCounts(docs={name: 0 for name in names})
        self._tally = RecordTally()

    def add(self, result: BatchResult, verdicts: Sequence[Optional[str]]) -> None:
        """One batch; `verdicts` the dedup decision per candidate (None: kept)."""
        report, every, counts = self.report, self.every, self.counts
        self._tally.add(result.kinds, result.where)
        report.signal_counts(result.signals)
        reasons = list(result.reasons)
        for i, verdict in zip(result.candidates, verdicts):
            reasons[i] = verdict
        report.add_batch(result.kinds, result.where, result.hosts, result.langs, result.dates, result.chars,
                         result.tokens, reasons, result.details,
                         {result.candidates[k]: pii for k, pii in result.pii.items() if verdicts[k] is None})
        counts.skipped.update(kind for kind in result.kinds if kind != "doc")
        survivors = [k for k, verdict in enumerate(verdicts) if verdict is None]  # among the candidates
        if not survivors:
            return
        counts.languages.update(lang for lang in (result.langs[result.candidates[k]] for k in survivors)
                                if isinstance(lang, str))
        lengths = np.diff(result.ends, prepend=0)
        survivors = np.asarray(survivors)
        # Every n-th kept document (counted over the whole corpus) goes to the eval split.
        kept = self.kept_before + counts.kept
        to_eval = (kept + np.arange(len(survivors))) % every == every - 1 if every else np.zeros(len(survivors), bool)
        for split, rows in (("train", survivors[~to_eval]), ("eval", survivors[to_eval])):
            if not len(rows):
                continue
            if len(rows) == len(lengths):
                tokens = result.flat
            else:
                wanted = np.zeros(len(lengths), dtype=bool)
                wanted[rows] = True
                tokens = result.flat[np.repeat(wanted, lengths)]
            self.writers[split].add_documents(tokens, lengths[rows])
            counts.docs[split] += len(rows)
        counts.kept += len(survivors)

    def close(self) -> Dict[str, List[Dict[str, Any]]]:
        """The shards written per split; `counts` is complete afterwards."""
        self.counts.tally_kinds, self.counts.tally_examples = Counter(self._tally.kinds), list(self._tally.examples)
        return {name: writer.close() for name, writer in self.writers.items()}


def finish_splits(root: Path, shards: Dict[str, List[Dict[str, Any]]], counts: SplitCounts, report: ReportBuilder,
                  source_name: str, filters_enabled: bool) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(splits, documents) of the manifest; raises when no training document is left, and drops an
    empty eval split (fewer documents than eval_every_nth_document)."""
    splits = {name: {"docs": counts.docs[name], "tokens": sum(s["tokens"] for s in entries), "shards": entries}
              for name, entries in shards.items()}
    skipped = Counter(counts.skipped)
    if counts.docs["train"] == 0:
        bad_input = counts.tally().no_documents_error(source_name)
        if bad_input is not None:
            raise bad_input
        raise DataError(
            f"source {source_name} gave no training documents "
            f"({report.read} read, {skipped['empty']} empty, {sum(skipped.values()) - skipped['empty']} bad, "
            f"{report.read - sum(skipped.values())} removed by the filters); check source.path, "
            f"source.text_field and the filters"
        )
    if "eval" in splits and counts.docs["eval"] == 0:
        del splits["eval"]
        shutil.rmtree(root / "eval", ignore_errors=True)
    documents_info = {
        "read": report.read,
        "kept": counts.kept,
        "skipped": {"empty": skipped.pop("empty", 0), **dict(sorted(skipped.items()))},
        "languages": dict(sorted(counts.languages.items())),
    }
    if filters_enabled:
        documents_info["removed"] = report.read - counts.kept - sum(documents_info["skipped"].values())
    return splits, documents_info
