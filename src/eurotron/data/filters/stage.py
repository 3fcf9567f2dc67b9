"""The per-batch work of eurotron-prepare, run in worker processes (or in the main one).

A batch of raw records goes in; out comes, per record, what it was (a document, an empty one, or a
bad record of some kind) and for each document its host, language, date, size, whether the domain
lists or the opt-out filter removed it, its PII counts and dedup keys — and the tokens of the
documents still in the running (pass 2) or their texts (pass 1, tokenizer training). Everything
that needs the whole corpus in order (dedup decisions, shards, the report) stays in the main process.

Order inside the stage: parse → domain lists → opt-out (robots.txt, TDMRep) → PII scrubbing →
dedup keys → tokens. Documents the lists or the opt-out filter remove are still tokenized (the text
as read), so the report can say how many tokens each reason removed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...config import FiltersConfig
from ..errors import DataError
from ..readers import BadRecord, parse_record, plain_jsonl_document
from .dedup import DedupKeys, WordBatch, MinHasher, exact_keys
from .lists import DomainLists
from .optout import OptOutFilter, bad_url_decision
from .pii import PiiScrubber
from .robots import resolve_policy
from .urls import BadUrl, ParsedUrl, parse_url

BAD_RECORD_POLICIES = ("fail", "skip")


def effective_policy(filters: FiltersConfig) -> Dict[str, str]:
    o = filters.optout
    return resolve_policy(o.policy, {"missing": o.on_missing, "4xx": o.on_4xx, "5xx": o.on_5xx,
                                     "unparsable": o.on_unparsable, "bad_url": o.on_bad_url,
                                     "tdmrep_unreadable": o.on_tdmrep_unreadable})


def uses_snapshot(filters: FiltersConfig) -> bool:
    return filters.enabled and (filters.optout.robots or filters.optout.tdmrep)


@dataclass
class StageSettings:
    filters: FiltersConfig
    text_field: str
    bad_records: str
    # The resolved snapshot directory (None when the opt-out filter is off).
    snapshot: Optional[str] = None
    # Pass 2: the saved tokenizer to encode with; pass 1 (None): return the texts instead.
    tokenizer_dir: Optional[str] = None
    # SentencePiece threads per encode call (None: the default; 1 in worker processes).
    encode_threads: Optional[int] = None
    # False: no dedup keys (zeros), for a pass whose dedup decisions are already taken (staged tokenize).
    dedup_keys: bool = True


@dataclass
class BatchResult:
    # Per record: "doc", "empty", or the kind of bad record.
    kinds: List[str]
    where: List[Optional[str]]  # set for bad records
    # Per record (None / 0 for non-documents).
    hosts: List[Optional[str]]
    langs: List[Any]
    dates: List[Any]
    chars: List[int]
    tokens: List[int]
    reasons: List[Optional[str]]  # removal by the lists or the opt-out filter
    details: List[Any]
    # The documents still in the running ("candidates"), in order.
    candidates: List[int]
    keys: DedupKeys
    pii: Dict[int, Dict[str, int]]  # replacements by position in `candidates`, for those that had any
    flat: Optional[np.ndarray] = None  # pass 2: their tokens, each document followed by EOS
    ends: Optional[np.ndarray] = None
    texts: Optional[List[str]] = None  # pass 1: their texts
    signals: Counter = field(default_factory=Counter)


class Stage:
    def __init__(self, settings: StageSettings) -> None:
        self.settings = settings
        f = settings.filters
        self.enabled = f.enabled
        if settings.bad_records not in BAD_RECORD_POLICIES:
            raise DataError(f"bad_records={settings.bad_records!r}: must be fail or skip")
        self.lists = DomainLists(f.block_domains, f.allow_domains) if f.enabled else None
        self.active_lists = self.lists if self.lists is not None and self.lists.active else None
        self.policy = effective_policy(f)
        self.optout: Optional[OptOutFilter] = None
        if uses_snapshot(f):
            from .snapshot import SnapshotStore

            store = SnapshotStore(settings.snapshot)
            self.optout = OptOutFilter(store, f.optout.agents, f.optout.wildcard_group, f.optout.robots,
                                       f.optout.tdmrep, self.policy, f.optout.robots_semantics)
        self.pii = PiiScrubber(f.pii.kinds) if f.enabled and f.pii.enabled else None
        self.minhash = (MinHasher(f.dedup.num_perm, f.dedup.shingle_words, f.dedup.threshold)
                        if f.enabled and f.dedup.near else None)
        self.tokenizer = None
        if settings.tokenizer_dir is not None:
            from ..tokenizer import Tokenizer

            self.tokenizer = Tokenizer.load(settings.tokenizer_dir)

    # ------------------------------------------------------------------------------------ parsing
    def _parse(self, rows: Sequence[Tuple[str, Any]], result: BatchResult) -> List[Optional[Dict[str, Any]]]:
        docs: List[Optional[Dict[str, Any]]] = []
        kinds, where_bad, field, fail = result.kinds, result.where, self.settings.text_field, \
            self.settings.bad_records == "fail"
        for where, raw in rows:
            # The common case inline (a JSONL line holding an object with a string under "text");
            # parse_record does the rest and names what is wrong.
            doc = plain_jsonl_document(raw) if field == "text" else None
            if doc is None:
                try:
                    doc = parse_record(raw, field, where)
                except BadRecord as err:
                    if fail:
                        raise
                    docs.append(None)
                    kinds.append(err.kind)
                    where_bad.append(where)
                    continue
            text = doc["text"]
            if not text or text.isspace():  # no copy, unlike strip()
                docs.append(None)
                kinds.append("empty")
            else:
                docs.append(doc)
                kinds.append("doc")
            where_bad.append(None)
        return docs

    # ------------------------------------------------------------------------------------- filters
    def _filter(self, doc: Dict[str, Any], signals: Counter, origins: List[Tuple[str, str, Optional[str]]]
                ) -> Tuple[Optional[str], Optional[str], Any]:
        """(host, removal reason, detail) from the domain lists and the opt-out filter; what the
        snapshot said about the origin goes to `origins` (counted per batch)."""
        f = self.settings.filters
        url = doc.get(f.url_field)
        try:
            parsed: Optional[ParsedUrl] = parse_url(url)
        except BadUrl as err:
            signals[f"url:{err.kind}"] += 1
            if self.optout is not None:
                reason, detail = bad_url_decision(self.policy, err.kind)
                return None, reason, detail
            return None, None, None
        host = parsed.host
        if self.active_lists is not None:
            verdict = self.active_lists.check(host)
            if verdict:
                return host, verdict, None
        if self.optout is None:
            return host, None, None
        decision = self.optout.check(url, parsed, doc.get(f.headers_field), doc.get(f.html_field))
        origins.append((decision.robots_case, decision.tdmrep_status, decision.differs))
        reason = decision.reason
        return host, reason, decision.agents if reason == "robots" else decision.detail

    def _count_origins(self, origins: List[Tuple[str, str, Optional[str]]], signals: Counter) -> None:
        f = self.settings.filters
        for (robots_case, tdm_status, differs), n in Counter(origins).items():
            if f.optout.robots:
                signals["robots:" + robots_case] += n
                if differs is not None:  # robots.txt disallows it under this semantics only
                    signals["robots_semantics:removed_only_by_" + differs] += n
            if f.optout.tdmrep:
                signals["tdmrep:" + tdm_status] += n

    # --------------------------------------------------------------------------------------- batch
    def process(self, rows: Sequence[Tuple[str, Any]]) -> BatchResult:
        n = len(rows)
        bands = self.minhash.bands if self.minhash is not None else 0
        result = BatchResult(kinds=[], where=[], hosts=[None] * n, langs=[], dates=[], chars=[0] * n,
                             tokens=[0] * n, reasons=[None] * n, details=[None] * n, candidates=[],
                             keys=DedupKeys(np.zeros(0, np.uint64), np.zeros((0, bands), np.uint64),
                                            np.zeros(0, bool)), pii={})
        docs = self._parse(rows, result)
        f = self.settings.filters
        lang_field, date_field, url_field = f.lang_field, f.date_field, f.url_field
        langs, dates, texts = result.langs, result.dates, []
        hosts, reasons, details, chars, candidates = (result.hosts, result.reasons, result.details, result.chars,
                                                      result.candidates)
        origins: List[Tuple[str, str, Optional[str]]] = []
        check = self._filter if self.enabled else None
        for i, doc in enumerate(docs):
            if doc is None:
                langs.append(None)
                dates.append(None)
                texts.append(None)
                continue
            text = doc["text"]
            langs.append(doc.get(lang_field))
            dates.append(doc.get(date_field))
            texts.append(text)
            chars[i] = len(text)
            if check is not None:
                hosts[i], reason, detail = check(doc, result.signals, origins)
                if reason is not None:
                    reasons[i], details[i] = reason, detail
                    continue
            else:
                hosts[i] = _host_or_none(doc.get(url_field))
            candidates.append(i)
        self._count_origins(origins, result.signals)
        kept_texts = [texts[i] for i in result.candidates]
        if self.pii is not None:
            kept_texts, result.pii = self.pii.scrub_batch(kept_texts)
        if self.settings.dedup_keys:
            result.keys = self._keys(kept_texts, bands)
        else:
            n = len(kept_texts)
            result.keys = DedupKeys(np.zeros(n, np.uint64), np.zeros((n, bands), np.uint64), np.zeros(n, bool))
        if self.tokenizer is None:
            result.texts = kept_texts
        else:
            self._tokenize(texts, kept_texts, result)
        return result

    def _keys(self, texts: List[str], bands: int) -> DedupKeys:
        f = self.settings.filters
        exact, band_keys = np.zeros(len(texts), np.uint64), np.zeros((len(texts), bands), np.uint64)
        has = np.zeros(len(texts), bool)
        if not (self.enabled and texts and (f.dedup.exact or f.dedup.near)):
            return DedupKeys(exact, band_keys, has)
        batch = WordBatch.of(texts)
        if f.dedup.exact:
            exact = exact_keys(texts, batch)
        if self.minhash is not None:
            band_keys, has = self.minhash.band_keys(texts, batch)
        return DedupKeys(exact, band_keys, has)

    def _tokenize(self, texts: List[Optional[str]], kept_texts: List[str], result: BatchResult) -> None:
        """Encode the candidates (scrubbed) and the removed documents (as read, for counting)."""
        tok = self.tokenizer
        removed = [i for i, t in enumerate(texts) if t is not None and result.reasons[i] is not None]
        ids = tok.encode_batch(kept_texts + [texts[i] for i in removed], self.settings.encode_threads)
        for i, seq in zip(result.candidates + removed, ids):
            result.tokens[i] = len(seq) + 1  # + EOS
        kept_ids = ids[:len(kept_texts)]
        if not kept_ids:
            return
        from ..native import flatten_token_ids
        from ..shards import token_dtype

        try:
            result.flat, result.ends = flatten_token_ids(kept_ids, tok.eos_id, tok.vocab_size,
                                                         token_dtype(tok.vocab_size))
        except ValueError as err:
            raise DataError(f"the tokenizer produced ids outside [0, {tok.vocab_size}) ({err}); its vocabulary "
                            f"size is wrong") from None


def _host_or_none(url: Any) -> Optional[str]:
    try:
        return parse_url(url).host
    except BadUrl:
        return None
