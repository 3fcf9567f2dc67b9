"""The compliance stage end to end: demo corpus → prepare → shards + report (exact counts), bad
input, workers, tokenizer training without removed documents, and the EU summary draft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eurotron.compose import compose_prepare
from eurotron.config import (FiltersConfig, PrepareConfig, SourceConfig, SummaryConfig, SummaryModelConfig,
                             TokenizerConfig)
from eurotron.data.errors import DataError
from eurotron.data.loader import TokenDataset
from eurotron.data.prepare import prepare
from eurotron.data.tokenizer import Tokenizer
from eurotron.paths import DEMO_CORPUS

REPO = Path(__file__).resolve().parents[1]
DEMO_URLS = [json.loads(line)["url"] for line in DEMO_CORPUS.read_text().splitlines()]


def demo_prepare(out, *overrides):
    return prepare(compose_prepare([f"output_dir={out}", "tokenizer.vocab_size=600", *overrides]), progress=False)


def all_texts(out):
    tokenizer = Tokenizer.load(Path(out) / "tokenizer")
    texts = []
    for split in ("train", "eval"):
        dataset = TokenDataset(out, split)
        texts += [tokenizer.decode(dataset.doc(i)[:-1].tolist()) for i in range(dataset.num_docs)]
    return texts


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "prepared"
    manifest = demo_prepare(out)
    return out, manifest, json.loads((out / "report.json").read_text())


def test_demo_removals_are_exact(demo):
    out, manifest, report = demo
    assert manifest["documents"] == {"read": 202, "kept": 160, "skipped": {"empty": 0}, "removed": 42,
                                     "languages": manifest["documents"]["languages"]}
    assert len(manifest["documents"]["languages"]) == 15
    assert manifest["report"]["removed"] == {"robots": 31, "tdmrep": 5, "dedup_exact": 3, "dedup_near": 3}
    removed = report["removed"]
    assert removed["robots"]["by_agent"] == {"ClaudeBot": 19, "Google-Extended": 19, "GPTBot": 19, "CCBot": 10,
                                             "CCBot/2.0": 10, "CCBot/1.0": 10, "Bytespider": 2}
    assert [(d["domain"], d["docs"]) for d in removed["robots"]["top_domains"]] == [
        ("www.littera-brevis.eu", 19), ("wetter.talpost-nachrichten.de", 10), ("blog.stroomgebied-journaal.nl", 2)]
    assert removed["tdmrep"]["by_signal"] == {"well_known": 5}
    assert report["optout_signals"] == {
        "robots": {"4xx": 10, "5xx": 5, "missing": 16, "ok": 169, "unparsable": 2},
        "tdmrep": {"absent": 166, "ok": 16, "unreadable": 20}}
    # The demo's robots.txt files read the same under RFC 9309 and Protego.
    assert report["robots_semantics"] == {"used": "rfc9309", "documents_decided_differently": 0,
                                          "removed_only_by_rfc9309": 0, "removed_only_by_apertus": 0}
    assert report["pii"] == {"replaced": {"email": 11, "iban": 4, "ipv4": 6, "ipv6": 1, "phone": 7}, "documents": 8}
    assert report["documents"] == {"read": 202, "in": 202, "out": 160, "removed": 42, "skipped": {"empty": 0}}
    splits = manifest["splits"]
    assert report["tokens"]["out"] == sum(s["tokens"] for s in splits.values())
    assert report["tokens"]["in"] == report["tokens"]["out"] + report["tokens"]["removed"]
    assert sum(e["tokens"] for e in removed.values()) == report["tokens"]["removed"]
    assert report["snapshot"]["origins"] == 14 and report["policy"]["5xx"] == "keep"
    assert report["crawl_period"]["in"]["first"] <= report["crawl_period"]["out"]["first"]
    assert set(report["languages"]["out"]) == set(report["languages"]["in"]) and len(report["languages"]["in"]) == 15
    md = (out / "report.md").read_text()
    for needle in ("| robots | robots.txt disallows an AI crawler | 31 |", "| GPTBot | 19 |", "Policy `apertus`",
                   "| iban | 4 |", "www.littera-brevis.eu (19)"):
        assert needle in md, needle


def test_demo_shards_hold_exactly_the_kept_scrubbed_documents(demo):
    out, manifest, _ = demo
    texts = all_texts(out)
    assert len(texts) == 160
    joined = "\n".join(texts)
    assert "@example.org" not in joined and "DE89 3704" not in joined and "192.0.2.15" not in joined
    assert joined.count("<email-pii>") == 11 and joined.count("<iban-pii>") == 4
    corpus = {json.loads(line)["url"]: json.loads(line)["text"] for line in DEMO_CORPUS.read_text().splitlines()}
    littera = [t for u, t in corpus.items() if "littera-brevis" in u]
    assert len(littera) == 19 and not any(t in texts for t in littera)
    german_weather = [t for u, t in corpus.items() if u.startswith("https://wetter.talpost-nachrichten.de/de/")]
    assert len(german_weather) == 1 and german_weather[0] in texts  # Allow: /de/bericht/ wins (longer)


def test_rfc9309_policy_removes_unreachable_and_unknown_origins(tmp_path):
    manifest = demo_prepare(tmp_path / "rfc", "filters.optout.policy=rfc9309")
    report = json.loads((tmp_path / "rfc" / "report.json").read_text())
    assert report["removed"]["robots_policy"]["by_case"] == {"5xx": 5, "missing": 16}
    assert report["removed"]["robots"]["docs"] == 31 and report["removed"]["tdmrep"]["docs"] == 5
    assert manifest["documents"]["kept"] == 202 - sum(e["docs"] for e in report["removed"].values())


def test_prepare_cli_summary_lists_removals(demo):
    from eurotron.cli.prepare import summary

    out, manifest, _ = demo
    text = summary(manifest, str(out))
    assert "202 read, 160 kept, 0 skipped (empty)" in text
    assert "removed: 42 documents" in text and "GPTBot 19" in text and "well_known 5" in text
    assert f"report: {out / 'report.md'}" in text


# -------------------------------------------------------------------------------------- bad input
def _bad_corpus(path, snapshot):
    demo = [json.loads(line) for line in DEMO_CORPUS.read_text().splitlines()]
    good, odd = demo[:60], [d["text"] for d in demo[60:64]]
    lines = [json.dumps({"text": d["text"], "url": f"https://ok.eu/{i}", "lang": d["lang"]}).encode()
             for i, d in enumerate(good)]
    lines += [
        b'{"text": "broken',                                          # malformed_json
        b'{"text": "caf\xe9 latin-1"}',                               # invalid_utf8
        b'["a", "list"]',                                              # not_an_object
        b'{"body": "no text field"}',                                  # missing_text
        b'{"text": null}',                                             # text_not_string
        b'{"text": "   "}',                                            # empty
        b'{"text": "lone \\ud800 surrogate", "url": "https://ok.eu/s"}',  # invalid_unicode
        json.dumps({"text": odd[0], "url": "ftp://files.eu/a"}).encode(),
        json.dumps({"text": odd[1]}).encode(),
        json.dumps({"text": odd[2], "url": "https://garbage.eu/a"}).encode(),
        json.dumps({"text": odd[3], "url": "https://tdm.eu/a"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    (snapshot / "snapshot.json").parent.mkdir(parents=True, exist_ok=True)
    (snapshot / "snapshot.json").write_text(json.dumps({"format": "eurotron-optout-snapshot", "format_version": 1}))
    fetched = "2025-01-01T00:00:00Z"
    records = [
        {"origin": "https://ok.eu", "robots": {"status": 200, "fetched": fetched, "body": "User-agent: *\nAllow: /\n"}},
        {"origin": "https://garbage.eu", "robots": {"status": 200, "fetched": fetched, "body": "<html>oops</html>"}},
        {"origin": "https://tdm.eu", "robots": {"status": 404, "fetched": fetched},
         "tdmrep": {"status": 200, "fetched": fetched, "body": "[{\"location\": \"/\", \"tdm-reservation\": "}},
    ]
    (snapshot / "origins.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def _filtered_config(corpus, snapshot, out, **kwargs):
    filters = kwargs.pop("filters", FiltersConfig(enabled=True, snapshot=str(snapshot)))
    return PrepareConfig(source=SourceConfig(type="jsonl", path=str(corpus)), output_dir=str(out),
                         tokenizer=TokenizerConfig(vocab_size=500), filters=filters, eval_every_nth_document=0,
                         **kwargs)


def test_bad_input_is_counted_per_kind_never_dropped_silently(tmp_path):
    corpus, snapshot = tmp_path / "bad.jsonl", tmp_path / "snap"
    _bad_corpus(corpus, snapshot)
    manifest = prepare(_filtered_config(corpus, snapshot, tmp_path / "out", bad_records="skip"), progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    skipped = {"empty": 1, "invalid_unicode": 1, "invalid_utf8": 1, "malformed_json": 1, "missing_text": 1,
               "not_an_object": 1, "text_not_string": 1}
    assert manifest["documents"]["skipped"] == skipped and report["documents"]["skipped"] == skipped
    assert report["bad_input"]["examples"]["malformed_json"] == [f"{corpus}:61"]
    assert report["bad_input"]["examples"]["invalid_utf8"] == [f"{corpus}:62"]
    assert report["optout_signals"]["url"] == {"no_url": 1, "non_http_url": 1}
    assert report["optout_signals"]["robots"] == {"ok": 60, "unparsable": 1, "4xx": 1}
    assert report["optout_signals"]["tdmrep"] == {"absent": 61, "unreadable": 1}
    # The apertus policy keeps all four odd documents: 60 + 4 kept, every record accounted for.
    assert report["bad_input"]["examples"]["invalid_unicode"] == [f"{corpus}:67"]
    assert manifest["documents"]["kept"] == 64 and manifest["documents"]["read"] == 71
    assert report["documents"]["read"] == report["documents"]["in"] + sum(skipped.values())

    strict = FiltersConfig(enabled=True, snapshot=str(snapshot))
    strict.optout.policy = "strict"
    prepare(_filtered_config(corpus, snapshot, tmp_path / "strict", bad_records="skip", filters=strict),
            progress=False)
    report = json.loads((tmp_path / "strict" / "report.json").read_text())
    assert report["removed"]["url_policy"]["by_case"] == {"no_url": 1, "non_http_url": 1}
    assert report["removed"]["robots_policy"]["by_case"] == {"unparsable": 1}
    assert report["removed"]["tdmrep_policy"]["docs"] == 1

    with pytest.raises(DataError, match=r"bad\.jsonl:61: malformed JSON"):
        prepare(_filtered_config(corpus, snapshot, tmp_path / "fail", bad_records="fail"), progress=False)
    assert not (tmp_path / "fail").exists()


def test_config_problems_are_reported_before_work(tmp_path):
    cfg = _filtered_config(tmp_path / "c.jsonl", None, tmp_path / "o", num_workers=-1, bad_records="ignore")
    cfg.filters.snapshot = None
    cfg.filters.optout.policy = "lenient"
    cfg.filters.pii.kinds = ["email", "ssn"]
    cfg.filters.optout.robots_semantics = "google"
    cfg.filters.optout.agents = ["GPTBot", "*GPTBot*"]
    with pytest.raises(DataError) as info:
        prepare(cfg, progress=False)
    message = str(info.value)
    for needle in ("num_workers=-1", "bad_records='ignore'", "filters.snapshot is not set", "policy='lenient'",
                   "unknown ssn", "robots_semantics='google'", "'*GPTBot*' is no crawler product token"):
        assert needle in message, needle


# ------------------------------------------------------------------------------ workers, pass 1
def test_workers_give_identical_output(demo, tmp_path):
    out, manifest, report = demo
    parallel = demo_prepare(tmp_path / "par", "num_workers=2")
    for split in ("train", "eval"):
        for a, b in zip(manifest["splits"][split]["shards"], parallel["splits"][split]["shards"]):
            assert a["sha256_bin"] == b["sha256_bin"] and a["sha256_idx"] == b["sha256_idx"]
    assert parallel["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    other = json.loads((tmp_path / "par" / "report.json").read_text())
    for key in ("documents", "tokens", "removed", "pii", "languages", "optout_signals"):
        assert other[key] == report[key], key


def test_removed_documents_never_train_the_tokenizer(tmp_path):
    docs = [{"text": json.loads(line)["text"], "url": f"https://fine.eu/{i}"}
            for i, line in enumerate(DEMO_CORPUS.read_text().splitlines())]
    docs += [{"text": f"Zyxwvuq {i} " * 200, "url": f"https://blocked.eu/{i}"} for i in range(30)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (tmp_path / "block.txt").write_text("blocked.eu\n")

    def pieces(block):
        filters = FiltersConfig(enabled=True, block_domains=str(tmp_path / "block.txt") if block else None)
        filters.optout.robots = filters.optout.tdmrep = False
        out = tmp_path / ("blocked" if block else "open")
        prepare(_filtered_config(corpus, None, out, filters=filters), progress=False)
        tok = Tokenizer.load(out / "tokenizer")
        return {tok.decode([i]) for i in range(tok.vocab_size)}, json.loads((out / "report.json").read_text())

    open_vocab, _ = pieces(block=False)
    assert any("yxwv" in p.lower() for p in open_vocab)  # control: the word is learnt when seen
    blocked_vocab, report = pieces(block=True)
    assert not any("yxwv" in p.lower() for p in blocked_vocab)
    assert report["removed"]["blocklist"]["docs"] == 30


# ------------------------------------------------------------------------------------- summary
def test_summary_draft_traces_every_figure(demo, tmp_path):
    from eurotron.data.filters.summary import load_reports, render_summary

    out, _, report = demo
    cfg = SummaryConfig(reports=[str(out / "report.json"), str(out)],
                        model=SummaryModelConfig(name="Eurotron-Demo", version="0.1"))
    text = render_summary(cfg, load_reports(cfg.reports))
    total = 2 * report["tokens"]["out"]
    assert f"Training data size (text): {total:,} tokens (less than 1 billion tokens) = [R1 `tokens.out`] + " \
           f"[R2 `tokens.out`]" in text
    for heading in ("## 1. General information", "### 1.1 Provider identification", "## 2. List of data sources",
                    "### 2.3 Data crawled and scraped from online sources", "## 3. Data processing aspects",
                    "### 3.1 Respect of reservation of rights"):
        assert heading in text, heading
    assert "Removed (robots.txt disallows an AI crawler): 31 documents" in text and "[R1 `removed.robots`]" in text
    assert "robots.txt read as RFC 9309 specifies." in text
    assert "robots.txt removals by the crawler whose group disallowed (`*`: the group for all crawlers): ClaudeBot 19" \
        in text and "[R1 `removed.robots.by_agent`]" in text
    legacy = json.loads(json.dumps(report))
    del legacy["filters"]["optout"]["robots_semantics"]  # a report from before: Protego decided
    assert "robots.txt read as Protego reads it" in render_summary(cfg, [("old.json", legacy)])
    assert "- www.biblioteche-aperte.it:" in text  # web source: top domains listed
    assert "Latest data (knowledge cut-off): 2025-06-07 [R1 `crawl_period.out.last`]" in text
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "eurotron.cli.summary", f"reports=[{out}/report.json]",
                           f"output={tmp_path}/summary.md", "model.name=Eurotron-Demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Eurotron-Demo" in (tmp_path / "summary.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "eurotron.cli.summary", f"reports=[{tmp_path}/nope.json]"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no report.json there" in bad.stderr


def test_top_domains_stay_bounded():
    from eurotron.data.filters.report import TopCounter

    top = TopCounter(capacity=10)
    top.add_many([f"small{i}.eu" for i in range(100)], [1] * 100)
    top.add_many(["big.eu"] * 5, [1000] * 5)
    top.add("big.eu", 1000)
    assert len(top) <= 20 and top.approximate
    assert top.top(1) == [{"domain": "big.eu", "docs": 6, "tokens": 6000}]
    exact = TopCounter(capacity=10)
    exact.add_many(["a.eu", "b.eu", "a.eu"], [5, 7, 5])
    assert exact.top() == [{"domain": "a.eu", "docs": 2, "tokens": 10}, {"domain": "b.eu", "docs": 1, "tokens": 7}]
    assert not exact.approximate


def test_crawl_dates_are_read_as_days_or_months():
    from eurotron.data.filters.report import day_of

    assert day_of("2024-03-05T12:34:56Z") == "2024-03-05" and day_of("2024-03-05") == "2024-03-05"
    assert day_of("2024-03") == day_of("2024-03-xx") == day_of("2024-03-5") == "2024-03"
    for undated in ("2024", "24-03-05", "2024/03/05", "2024-3-05", "", None, 20240305, "abcd-ef-gh"):
        assert day_of(undated) is None, undated
