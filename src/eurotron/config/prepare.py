"""Data preparation schema (``eurotron-prepare``): source, tokenizer and filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .cluster import ClusterConfig


# ------------------------------------------------------------------------------------------- prepare
@dataclass
class SourceConfig:
    # jsonl | parquet | hf (a `datasets` name or local path) | demo (the corpus shipped with eurotron)
    type: str = "demo"
    path: Optional[str] = None
    # For type=hf: dataset config name and split.
    name: Optional[str] = None
    split: str = "train"
    text_field: str = "text"


@dataclass
class TokenizerConfig:
    # sentencepiece: train one on the corpus; hf: load an existing Hugging Face tokenizer directory.
    type: str = "sentencepiece"
    path: Optional[str] = None
    vocab_size: int = 8192
    # SentencePiece model type: bpe | unigram.
    model_type: str = "bpe"
    # Cap on characters fed to the trainer, so tokenizer training stays bounded on huge corpora.
    max_training_chars: int = 50_000_000


# Crawlers whose robots.txt groups count as an AI-training opt-out: the list Apertus applied, `*` last.
AI_CRAWLER_AGENTS = (
    "AI2Bot", "Applebot-Extended", "Bytespider", "CCBot", "CCBot/2.0", "CCBot/1.0", "ClaudeBot",
    "cohere-training-data-crawler", "Diffbot", "Meta-ExternalAgent", "Google-Extended", "GPTBot",
    "PanguBot", "FacebookBot", "*",
)


@dataclass
class OptOutConfig:
    # robots.txt: a document is removed when any of `agents` may not fetch its URL.
    robots: bool = True
    agents: List[str] = field(default_factory=lambda: list(AI_CRAWLER_AGENTS))
    # Whether `User-agent: *` groups count: for the agent "*" and for agents without a group of their
    # own (Apertus: yes). false: only groups that name an agent count.
    wildcard_group: bool = True
    # How robots.txt is read: rfc9309 (RFC 9309 exactly, eurotron's matcher) | apertus (Protego's
    # decisions, to re-run Apertus's filtering). The report counts the documents the two decide differently.
    robots_semantics: str = "rfc9309"
    # TDMRep: /.well-known/tdmrep.json, then `tdm-reservation` headers, then HTML <meta>.
    tdmrep: bool = True
    # What a missing, 4xx, 5xx/unreachable or unparsable robots.txt means: apertus (keep the
    # documents), rfc9309 (4xx allows, 5xx/unreachable disallows), strict (remove on any doubt).
    policy: str = "apertus"
    # Per-case overrides of the policy, keep | remove (null: the policy's choice).
    on_missing: Optional[str] = None
    on_4xx: Optional[str] = None
    on_5xx: Optional[str] = None
    on_unparsable: Optional[str] = None
    # A document without a URL, or with one that is not http(s).
    on_bad_url: Optional[str] = None
    # A tdmrep.json that is not a JSON array of rules.
    on_tdmrep_unreadable: Optional[str] = None


@dataclass
class PiiConfig:
    enabled: bool = True
    # email | ipv4 | ipv6 | iban (checksum-validated) | phone → <email-pii>, <ip-pii>, <iban-pii>, <phone-pii>
    kinds: List[str] = field(default_factory=lambda: ["email", "ipv4", "ipv6", "iban", "phone"])


@dataclass
class DedupConfig:
    # Exact: same text after normalisation (case, Unicode form, whitespace).
    exact: bool = True
    # Near: MinHash-LSH over word n-grams; pairs above `threshold` (estimated Jaccard) collide.
    near: bool = True
    threshold: float = 0.8
    # Signature length (one-permutation MinHash bins); LSH bands x rows are chosen from it.
    num_perm: int = 128
    shingle_words: int = 5


@dataclass
class FiltersConfig:
    # The compliance stage of eurotron-prepare: domain lists → opt-out → PII → dedup, with a report.
    enabled: bool = False
    # Opt-out snapshot directory (`eurotron-optout fetch`), or "demo" for the one shipped with eurotron.
    snapshot: Optional[str] = None
    optout: OptOutConfig = field(default_factory=OptOutConfig)
    # Files with one domain per line (# comments); a domain covers its subdomains, the most specific wins.
    block_domains: Optional[str] = None
    # When set, documents from domains not listed here are removed.
    allow_domains: Optional[str] = None
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # Record fields the filters and the report read.
    url_field: str = "url"
    date_field: str = "date"
    lang_field: str = "lang"
    headers_field: str = "headers"
    html_field: str = "html"


@dataclass
class StagedConfig:
    """eurotron-prepare launch=true: the corpus as Slurm jobs (README "Preparing a corpus on a cluster")."""

    # Resolved config, per-task outputs, job scripts and logs; null: <output_dir>.staged next to output_dir.
    work_dir: Optional[str] = None
    # Array tasks that filter (stage 1) and tokenize (stage 3), each a contiguous range of the input files.
    tasks: int = 4
    # Tasks of the dedup decisions (stage 2), each holding the keys whose hash % dedup_tasks is its own.
    dedup_tasks: int = 2
    # At most this many tasks of an array run at once (0: no limit).
    max_parallel: int = 0
    # Per task: cores (stage 1 and 3 run num_workers=cpus_per_task-1 workers), memory (--mem), time limit.
    cpus_per_task: int = 1
    mem_per_task: str = "4G"
    time: str = "02:00:00"
    # null: cluster.slurm.partition (on a GPU system, name its CPU partition here).
    partition: Optional[str] = None


@dataclass
class PrepareConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    output_dir: str = "data/demo"
    # Tokens per shard file before a new one is started.
    shard_tokens: int = 50_000_000
    # Every n-th document goes to the held-out split (0 = no held-out split).
    eval_every_nth_document: int = 20
    overwrite: bool = False
    # Filters and the report (off in the schema; configs/prepare.yaml turns them on).
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    # Worker processes that parse, filter and tokenize (0: everything in this process).
    num_workers: int = 0
    # A malformed record (bad JSON, invalid UTF-8, missing or non-string text): fail (stop, naming
    # its file and line) or skip (count it per kind in the report and go on).
    bad_records: str = "fail"
    # Submit the staged prepare to cluster's Slurm instead of running here (see `staged`).
    launch: bool = False
    staged: StagedConfig = field(default_factory=StagedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
