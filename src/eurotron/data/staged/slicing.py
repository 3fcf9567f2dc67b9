"""Contiguous slices of the input files, one per filter/tokenize task: the slices in task order are
the corpus in the order one process reads it, so "first occurrence" and every n-th kept document
mean the same. Slices are balanced by bytes; a file is never split (more tasks than files leaves
some tasks empty, which is allowed)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence


def slice_files(files: Sequence[Path], tasks: int) -> List[List[str]]:
    sizes = [max(Path(f).stat().st_size, 1) for f in files]
    total = sum(sizes)
    slices: List[List[str]] = [[] for _ in range(tasks)]
    done = 0
    for file, size in zip(files, sizes):
        # The task whose byte range holds this file's middle.
        task = min(int((done + size / 2) * tasks / total), tasks - 1)
        slices[task].append(str(file))
        done += size
    return slices
