"""Summary schema (``eurotron-summary``): the training-data summary's reports, provider and model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional



@dataclass
class SummaryProviderConfig:
    name: str = "[provider name]"
    contact: str = "[contact address]"


@dataclass
class SummaryModelConfig:
    name: str = "[model name]"
    version: str = "[version]"
    release_date: str = "[date of placement on the EU market]"
    # The model this one was derived from, if any (fine-tuning, continued pre-training).
    base_model: Optional[str] = None
    modalities: List[str] = field(default_factory=lambda: ["text"])


@dataclass
class SummaryConfig:
    # report.json files written by eurotron-prepare, one per prepared source.
    reports: List[str] = field(default_factory=list)
    # Where the Markdown draft goes (null: standard output).
    output: Optional[str] = None
    provider: SummaryProviderConfig = field(default_factory=SummaryProviderConfig)
    model: SummaryModelConfig = field(default_factory=SummaryModelConfig)
    # How many domains the "most relevant domains" list names per source.
    top_domains: int = 10
