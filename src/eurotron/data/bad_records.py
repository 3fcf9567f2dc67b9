"""What the stage read, by kind, with the first bad records' locations: so a run that ends with no
documents blames what the input really holds (bad JSON, missing text field …), not "empty"."""

from __future__ import annotations

from collections import Counter
from typing import List, Optional, Sequence, Tuple

from .errors import DataError

EXAMPLES = 3


class RecordTally:
    def __init__(self) -> None:
        self.kinds: Counter = Counter()
        self.examples: List[Tuple[str, str]] = []  # (where, kind) of the first bad records
        self.failure: Optional[BaseException] = None  # an error that ended the stream
        self.finished = False  # the whole source was read

    def add(self, kinds: Sequence[str], where: Sequence[Optional[str]]) -> None:
        self.kinds.update(kinds)
        if len(self.examples) < EXAMPLES:
            for kind, at in zip(kinds, where):
                if kind not in ("doc", "empty") and len(self.examples) < EXAMPLES:
                    self.examples.append((at or "?", kind))

    @property
    def read(self) -> int:
        return sum(self.kinds.values())

    @property
    def bad(self) -> Counter:
        return Counter({k: n for k, n in self.kinds.items() if k not in ("doc", "empty")})

    def no_documents_error(self, source: str) -> Optional[DataError]:
        """The error for a source that gave no usable document, when bad records explain it."""
        if self.read == 0:
            return DataError(f"source {source} holds no records (empty files?); check source.path")
        bad = self.bad
        if not bad or self.kinds["doc"]:
            return None
        counts = ", ".join(f"{n:,} {kind}" for kind, n in bad.most_common())
        first = "; ".join(f"{where} ({kind})" for where, kind in self.examples)
        empty = f", {self.kinds['empty']:,} empty" if self.kinds["empty"] else ""
        return DataError(
            f"source {source} gave no usable document: of its {self.read:,} records, {counts}{empty}. "
            f"First: {first}. Check source.path, source.type and source.text_field (bad_records=fail stops "
            f"at the first bad record with its message)"
        )
