"""robots.txt under RFC 9309 (eurotron's matcher) and under Protego (robots_semantics: apertus).

The RFC's own examples, the reproductions of issue 15 (each decided both ways: RFC 9309 by default,
Protego's answer under apertus), parsing details, the 500 KiB rule, and the report line counting the
documents the two semantics decide differently.
"""

from __future__ import annotations

import base64
import json

import pytest
from protego import Protego

from eurotron.config import AI_CRAWLER_AGENTS
from eurotron.data.errors import DataError
from eurotron.data.filters.optout import OptOutFilter
from eurotron.data.filters.report import ReportBuilder, render_markdown
from eurotron.data.filters.rfc9309 import Rfc9309Rules, canonical_path
from eurotron.data.filters.robots import MAX_ROBOTS_BYTES, parsed_part, resolve_policy
from eurotron.data.filters.snapshot import SnapshotStore
from eurotron.data.filters.urls import parse_url

FETCHED = "2025-01-15T10:00:00Z"


def rfc(body, path, agents=("GPTBot",), wildcard_group=True):
    """The credited agents RFC 9309 disallows for `path`."""
    data = body if isinstance(body, bytes) else body.encode("utf-8")
    return Rfc9309Rules(data, list(agents), wildcard_group).disallowed("", path)


def allowed(body, path, agent):
    return not rfc(body, path, (agent,))


def snapshot_filter(tmp_path, body, agents=("GPTBot",), semantics="rfc9309", truncated=False):
    root = tmp_path / "snap"
    root.mkdir(parents=True, exist_ok=True)
    (root / "snapshot.json").write_text(json.dumps({"format": "eurotron-optout-snapshot", "format_version": 1}))
    data = body if isinstance(body, bytes) else body.encode("utf-8")
    fetched = {"status": 200, "fetched": FETCHED, "body_base64": base64.b64encode(data).decode("ascii")}
    if truncated:
        fetched["truncated"] = True
    (root / "origins.jsonl").write_text(json.dumps({"origin": "https://a.eu", "robots": fetched}) + "\n")
    return OptOutFilter(SnapshotStore(root), list(agents), True, True, False, resolve_policy("apertus", {}), semantics)


def decide(flt, path):
    url = "https://a.eu" + path
    return flt.check(url, parse_url(url))


# ------------------------------------------------------------------------------ the RFC's examples
RFC_5_1 = """User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""


def test_rfc_5_1_simple_example():
    # foobot: only the two allowed pages (and robots.txt itself).
    assert allowed(RFC_5_1, "/example/page.html", "foobot") and allowed(RFC_5_1, "/example/allowed.gif", "foobot")
    assert not allowed(RFC_5_1, "/example/other.html", "foobot") and not allowed(RFC_5_1, "/", "foobot")
    assert allowed(RFC_5_1, "/robots.txt", "foobot")
    # barbot and bazbot share one group, which replaces `*` for them.
    for bot in ("barbot", "BazBot"):
        assert not allowed(RFC_5_1, "/example/page.html", bot)
        assert allowed(RFC_5_1, "/example/x.gif", bot) and allowed(RFC_5_1, "/example/other", bot)
    # quxbot has a group without rules: everything is allowed; "EOF" is no directive.
    assert allowed(RFC_5_1, "/example/page.html", "quxbot") and allowed(RFC_5_1, "/a.gif", "quxbot")
    # Everyone else obeys `*`: no .gif anywhere, nothing under /example/, /publications/ allowed.
    assert not allowed(RFC_5_1, "/pics/a.gif", "otherbot") and allowed(RFC_5_1, "/pics/a.gif?x", "otherbot")
    assert not allowed(RFC_5_1, "/example/", "otherbot") and allowed(RFC_5_1, "/publications/x", "otherbot")


def test_rfc_5_2_longest_match_and_allow_wins_a_tie():
    body = "User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n"
    assert allowed(body, "/example/page/", "foobot") and allowed(body, "/example/page/x", "foobot")
    assert not allowed(body, "/example/page/disallowed.gif", "foobot")
    tie = "User-agent: foobot\nDisallow: /page\nAllow: /page\nDisallow: /p*e\nAllow: /pag*\n"
    assert allowed(tie, "/page", "foobot")
    # Order in the file does not matter; length does (`*` and `$` count as octets).
    body = "User-agent: foobot\nAllow: /x/\nDisallow: /x/page.html\n"
    assert not allowed(body, "/x/page.html", "foobot") and allowed(body, "/x/", "foobot")
    body = "User-agent: foobot\nDisallow: /x/*.html\nAllow: /x/page.html\n"
    assert allowed(body, "/x/page.html", "foobot")


def test_rfc_2_2_1_groups_naming_one_agent_are_merged_and_tokens_match_whole():
    body = ("User-agent: ExampleBot\nDisallow: /foo\nDisallow: /bar\n\n"
            "User-agent: examplebot\nDisallow: /baz\n\nUser-agent: *\nDisallow: /all\n")
    for path in ("/foo", "/bar", "/baz"):
        assert not allowed(body, path, "ExampleBot")
    assert allowed(body, "/all", "ExampleBot")  # a named group replaces `*`
    assert not allowed(body, "/all", "ExampleBot-News")  # no prefix match: falls back to `*`
    assert allowed(body, "/foo", "ExampleBot-News")
    assert allowed("User-agent: a\nDisallow: /\n", "/x", "b")  # no group, no `*`: no rules apply
    assert allowed("", "/x", "b")


def test_rfc_2_2_2_percent_encoding_table():
    assert canonical_path("/foo/bar?baz=quz") == canonical_path("/foo/bar?baz=quz")
    assert canonical_path("/foo/bar?baz=https://foo.bar") == "/foo/bar%3Fbaz%3Dhttps%3A//foo.bar"
    assert canonical_path("/foo/bar/ツ") == canonical_path("/foo/bar/%E3%83%84") == "/foo/bar/%E3%83%84"
    assert canonical_path("/foo/bar/%62%61%7A") == "/foo/bar/baz"
    # Rules are normalised the same way: an escaped letter matches the letter, hex case is no matter.
    assert not allowed("User-agent: *\nDisallow: /foo/bar/%62%61%7A\n", "/foo/bar/baz", "x")
    assert not allowed("User-agent: *\nDisallow: /%e3%83%84\n", "/ツ", "x")
    assert not allowed("User-agent: *\nDisallow: /ツ\n", "/%E3%83%84", "x")
    # Reading: a reserved character equals its escape, except "/" (RFC 3986: a different path).
    assert not allowed("User-agent: *\nDisallow: /a:b\n", "/a%3Ab", "x")
    assert allowed("User-agent: *\nDisallow: /a/b\n", "/a%2Fb", "x")
    # Rules are case-sensitive.
    assert allowed("User-agent: *\nDisallow: /X/\n", "/x/y", "x")


def test_rfc_2_2_3_special_characters():
    body = "User-agent: *\nDisallow: /this/*/exactly\nDisallow: /a%2Ab\n"
    assert not allowed(body, "/this/foo/exactly", "x") and not allowed(body, "/this//exactly", "x")
    assert not allowed(body, "/this/a/b/exactly/more", "x")  # `*` spans "/"
    assert allowed(body, "/this/exactly", "x")
    assert not allowed(body, "/a*b", "x") and allowed(body, "/axb", "x")  # %2A is a literal "*"
    body = "User-agent: *\nDisallow: /this/path/exactly$\n"
    assert not allowed(body, "/this/path/exactly", "x") and allowed(body, "/this/path/exactly/", "x")
    # Several `*`, anchored: each piece at its leftmost place, the last one at the end.
    body = "User-agent: *\nDisallow: /*a*b*c$\n"
    assert not allowed(body, "/xaybzc", "x") and not allowed(body, "/abcabc", "x") and allowed(body, "/abcd", "x")


def test_empty_disallow_robots_txt_and_rules_outside_groups():
    assert allowed("User-agent: *\nDisallow:\n", "/x", "x")
    assert allowed("Disallow: /\nUser-agent: *\nAllow: /\n", "/x", "x")  # before any user-agent: ignored
    assert allowed("User-agent: *\nDisallow: /\n", "/robots.txt", "x")
    assert allowed("User-agent: *\nDisallow: /\n", "/robots.txt?x=1", "x")
    assert not allowed("User-agent: *\nDisallow: /\n", "/robots.txt/x", "x")


def test_parsing_line_ends_bom_comments_and_other_records():
    for eol in ("\n", "\r\n", "\r"):
        body = eol.join(["\ufeffUser-agent: GPTBot # the bot", "Disallow: /a # not /b", "", "user-agent: *",
                         "Disallow: /c"])
        assert rfc(body, "/a") == ["GPTBot"] and rfc(body, "/b") == [] and rfc(body, "/c") == []
    # Other records (Sitemap, Crawl-delay, unknown) neither end a group nor split user-agent lines.
    body = ("User-agent: GPTBot\nCrawl-delay: 5\nSitemap: https://a.eu/s.xml\nUser-agent: CCBot\n"
            "Disallow: /a\nSitemap: https://a.eu/t.xml\nContent-Signal: ai-train=no\nDisallow: /b\n")
    assert rfc(body, "/a", ["GPTBot", "CCBot"]) == ["GPTBot", "CCBot"]
    assert rfc(body, "/b", ["CCBot"]) == ["CCBot"]
    # A rule line (even an empty one) ends the run of user-agent lines.
    body = "User-agent: GPTBot\nDisallow:\nUser-agent: CCBot\nDisallow: /\n"
    assert rfc(body, "/x", ["GPTBot", "CCBot"]) == ["CCBot"]
    # Lenient spellings (§2.2.4 reading): no colon, misspelled keys, spaced keys.
    body = "User agent GPTBot\ndissallow /a\nDisallow /b:c\nuseragent: CCBot\nDISALLOW : /d\n"
    assert rfc(body, "/a") == rfc(body, "/b:c") == ["GPTBot"] and rfc(body, "/d", ["CCBot"]) == ["CCBot"]
    # Octets A0 and 85 (inside UTF-8 "à", "Å") are no whitespace and no line end.
    body = "User-agent: *\nDisallow: /voilà\nDisallow: /Åland\n".encode("utf-8")
    assert rfc(body, "/voilà", ["*"]) == rfc(body, "/Åland", ["*"]) == ["*"]
    assert rfc(body, "/voil", ["*"]) == []


# --------------------------------------------------------------------- issue 15's reproductions
def both(tmp_path, body, path, agents=("GPTBot",)):
    """(rfc9309 decision, apertus decision, Protego's own answer) for one URL: removed or not."""
    got = {}
    for semantics in ("rfc9309", "apertus"):
        d = decide(snapshot_filter(tmp_path / semantics, body, agents, semantics), path)
        got[semantics] = (d.reason == "robots", d.differs)
    parser = Protego.parse(body)
    protego = any(not parser.can_fetch("https://a.eu" + path, a) for a in agents)
    return got["rfc9309"], got["apertus"], protego


@pytest.mark.parametrize("body, path, agents, rfc_removes", [
    # 1. Product tokens match whole, not as prefixes (§2.2.1).
    ("User-agent: Applebot\nDisallow: /\n\nUser-agent: *\nAllow: /\n", "/page", ["Applebot-Extended"], False),
    ("User-agent: Google\nDisallow: /\n", "/page", ["Google-Extended"], False),
    # 2. A final `$` is an anchor only (§2.2.3).
    ("User-agent: *\nDisallow: /a$\n", "/a$b", ["GPTBot"], False),
    ("User-agent: *\nDisallow: /\nAllow: /*.html$\n", "/x.html$", ["GPTBot"], True),
    # 3. An absolute-URL rule value matches no path (§2.2.2).
    ("User-agent: *\nDisallow: https://example.eu/private\n", "/https://example.eu/private", ["GPTBot"], False),
    # 5. index.html is no alias of its directory (a Google extension).
    ("User-agent: *\nDisallow: /dir/\nAllow: /dir/index.html\n", "/dir/", ["GPTBot"], True),
    # 6. Escapes compare as octets, not as UTF-8 text (§2.2.2).
    ("User-agent: *\nDisallow: /caf%E9\n", "/caf%E8", ["GPTBot"], False),
    # 7. `*GPTBot*` is no product token: the group applies to no crawler.
    ("User-agent: *GPTBot*\nDisallow: /\n", "/x", ["GPTBot"], False),
])
def test_issue_reproductions_rfc9309_by_default_protego_under_apertus(tmp_path, body, path, agents, rfc_removes):
    (rfc_removed, rfc_differs), (apertus_removed, apertus_differs), protego_removes = both(tmp_path, body, path, agents)
    assert rfc_removed is rfc_removes
    assert apertus_removed is protego_removes is (not rfc_removes)  # Protego decides these the other way
    winner = "rfc9309" if rfc_removes else "apertus"
    assert rfc_differs == apertus_differs == winner


def test_issue_1_credits_the_group_that_matched(tmp_path):
    body = "User-agent: Applebot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n"
    agents = ["Applebot-Extended", "GPTBot"]
    rfc_filter = snapshot_filter(tmp_path / "r", body, agents)
    assert decide(rfc_filter, "/private/x").agents == ["*"]  # both fall back to `*`
    assert decide(rfc_filter, "/page").reason is None
    apertus = snapshot_filter(tmp_path / "a", body, agents, "apertus")
    assert decide(apertus, "/page").agents == ["Applebot-Extended"]  # Protego: Applebot's group
    assert rfc(body, "/private/x", ["Applebot", "GPTBot"]) == ["Applebot", "*"]


def test_issue_6_latin1_octets(tmp_path):
    latin1 = "User-agent: *\nDisallow: /caf\xe9/\n".encode("latin-1")  # a raw octet E9, not UTF-8
    flt = snapshot_filter(tmp_path, latin1, ["*"])
    assert decide(flt, "/caf%E9/menu").reason == "robots" and decide(flt, "/caf%e9/menu").reason == "robots"
    assert decide(flt, "/caf%E8/menu").reason is None and decide(flt, "/café/menu").reason is None  # é: C3 A9
    utf8 = snapshot_filter(tmp_path / "u", "User-agent: *\nDisallow: /café/\n", ["*"])
    assert decide(utf8, "/café/menu").reason == "robots" and decide(utf8, "/caf%C3%A9/menu").reason == "robots"
    assert decide(utf8, "/caf%E9/menu").reason is None


def test_product_tokens_of_lines_and_agents():
    body = "User-agent: CCBot/2.0\nDisallow: /a\n\nUser-agent: AI2Bot\nDisallow: /b\n\nUser-agent: *\nDisallow: /c\n"
    agents = ["CCBot", "CCBot/2.0", "AI2Bot", "Bytespider", "*"]
    # Reading: "CCBot/2.0" names the token CCBot; digits belong to tokens (AI2Bot).
    assert rfc(body, "/a", agents) == ["CCBot", "CCBot/2.0"]
    assert rfc(body, "/b", agents) == ["AI2Bot"]
    assert rfc(body, "/c", agents) == ["*"]
    for bad in ("*GPTBot*", "Mozilla/5.0 (compatible; GPTBot)", ""):
        with pytest.raises(DataError, match="no crawler product token"):
            Rfc9309Rules(b"", [bad], True)
    assert rfc("User-agent: *\nDisallow: /\n", "/x", ["GPTBot", "*"], wildcard_group=False) == []


# ------------------------------------------------------------------------------ the 500 KiB rule
def test_500_kib_cut_drops_the_cut_line(tmp_path):
    head = "User-agent: *\nDisallow: /keep/\n"
    filler = "# " + "x" * 1000 + "\n"
    text = head + filler * ((MAX_ROBOTS_BYTES - len(head)) // len(filler) - 1)
    cut_line = "Disallow: /html/E"  # what the 500 KiB cut leaves of the next line
    text += "#" + "x" * (MAX_ROBOTS_BYTES - len(text) - len(cut_line) - 2) + "\n"
    body = (text + "Disallow: /html/E12243_01/\nDisallow: /beyond/\n").encode()
    assert body[:MAX_ROBOTS_BYTES].endswith(cut_line.encode())
    assert parsed_part(body) == text.encode()
    for semantics in ("rfc9309", "apertus"):
        flt = snapshot_filter(tmp_path / semantics, body, ["GPTBot"], semantics)
        assert decide(flt, "/keep/x").reason == "robots", semantics
        assert decide(flt, "/html/Ex").reason is None, semantics  # the cut line is no rule
        assert decide(flt, "/beyond/x").reason is None, semantics  # past 500 KiB: not parsed
    # A line that ends exactly at the cut is complete; a fetch cut short drops its last line too.
    exact = (text + " " * (MAX_ROBOTS_BYTES - len(text) - len("Disallow: /z\n")) + "Disallow: /z\nmore").encode()
    assert parsed_part(exact).endswith(b"Disallow: /z\n")
    assert parsed_part(b"User-agent: *\nDisallow: /ab", truncated=True) == b"User-agent: *\n"
    assert decide(snapshot_filter(tmp_path / "t", "User-agent: *\nDisallow: /ab", truncated=True), "/a").reason is None


# ------------------------------------------------------------------------------------ apertus
BODIES = [
    "User-agent: *\nDisallow: /private/\nAllow: /private/open\n",
    "User-agent: GPTBot\nDisallow: /\n\nUser-agent: *\nAllow: /\n",
    "User-agent: Applebot\nDisallow: /a\n\nUser-agent: Google\nDisallow: /b\n",
    "User-agent: *\nDisallow: /*.pdf$\nDisallow: /a$\nAllow: /dir/index.html\nDisallow: /dir/\n",
    "User-agent: CCBot/2.0\nDisallow: /\n\nUser-agent: *GPTBot*\nDisallow: /g\n",
    "User-agent: *\nDisallow: /caf%E9\nDisallow: https://a.eu/abs\nDisallow: /q?\n",
]
PATHS = ["/", "/private/x", "/private/open", "/a", "/a$b", "/b", "/x.pdf", "/dir/", "/dir/index.html", "/g",
         "/caf%E8", "/https://a.eu/abs", "/q", "/q?", "/robots.txt"]


def test_apertus_reproduces_protego(tmp_path):
    """Under apertus every document is removed exactly when Protego disallows it for some agent."""
    agents = list(AI_CRAWLER_AGENTS)
    for n, body in enumerate(BODIES):
        flt = snapshot_filter(tmp_path / str(n), body, agents, "apertus")
        parser = Protego.parse(body)
        for path in PATHS:
            url = "https://a.eu" + path
            protego = any(not parser.can_fetch(url, agent) for agent in agents)
            assert (decide(flt, path).reason == "robots") is protego, (body, path)


def test_semantics_and_agents_are_checked():
    with pytest.raises(DataError, match="robots_semantics='google'.*rfc9309, apertus"):
        OptOutFilter(None, ["GPTBot"], True, True, False, {}, "google")
    with pytest.raises(DataError, match="'\\*GPTBot\\*' is no crawler product token"):
        OptOutFilter(None, ["*GPTBot*"], True, True, False, {}, "rfc9309")


# ------------------------------------------------------------------------------------- report
def test_report_counts_documents_decided_differently():
    header = {"filters": {"enabled": True, "optout": {"robots": True, "agents": ["GPTBot"],
                                                      "wildcard_group": True, "robots_semantics": "rfc9309"}}}
    builder = ReportBuilder(header)
    builder.signal_counts({"robots:ok": 5, "robots_semantics:removed_only_by_apertus": 3,
                           "robots_semantics:removed_only_by_rfc9309": 1})
    report = builder.to_json()
    assert report["robots_semantics"] == {"used": "rfc9309", "documents_decided_differently": 4,
                                          "removed_only_by_rfc9309": 1, "removed_only_by_apertus": 3}
    assert report["optout_signals"] == {"robots": {"ok": 5}}
    md = render_markdown(report)
    assert "robots.txt semantics: `rfc9309`" in md and "decide differently: 4 (disallowed only under rfc9309: 1, " \
        "only under apertus: 3)" in md
    assert ReportBuilder({"filters": {"enabled": False}}).to_json().get("robots_semantics") is None


def test_stage_counts_the_documents_the_semantics_split(tmp_path):
    """Through the prepare stage: removals follow the chosen semantics, the other one is counted."""
    from eurotron.config import FiltersConfig
    from eurotron.data.filters.stage import Stage, StageSettings

    body = "User-agent: Applebot\nDisallow: /\n\nUser-agent: *\nDisallow: /dir/\nAllow: /dir/index.html\n"
    snapshot_filter(tmp_path, body)  # writes the snapshot
    paths = ["/page", "/other", "/dir/", "/dir/x", "/dir/index.html"]
    rows = [(f"c.jsonl:{n}", json.dumps({"text": f"document {n}", "url": "https://a.eu" + p}).encode())
            for n, p in enumerate(paths, 1)]
    got = {}
    for semantics in ("rfc9309", "apertus"):
        filters = FiltersConfig(enabled=True, snapshot=str(tmp_path / "snap"))
        filters.optout.agents, filters.optout.tdmrep = ["Applebot-Extended", "GPTBot"], False
        filters.optout.robots_semantics = semantics
        filters.pii.enabled = filters.dedup.exact = filters.dedup.near = False
        result = Stage(StageSettings(filters=filters, text_field="text", bad_records="fail",
                                     snapshot=str(tmp_path / "snap"))).process(rows)
        got[semantics] = (result.reasons, result.details, dict(result.signals))
    # RFC 9309: Applebot-Extended obeys `*` like GPTBot; index.html is no alias of "/dir/".
    assert got["rfc9309"][0] == [None, None, "robots", "robots", None]
    assert got["rfc9309"][1][2:4] == [["*"], ["*"]]
    # Protego: Applebot-Extended takes Applebot's group (everything), credited to it.
    assert got["apertus"][0] == ["robots"] * 5 and got["apertus"][1][0] == ["Applebot-Extended"]
    for semantics, (_, _, signals) in got.items():
        assert signals == {"robots:ok": 5, "robots_semantics:removed_only_by_apertus": 3}, semantics


def test_cli_check_names_the_semantics(tmp_path, capsys):
    from eurotron.cli.optout import main

    snapshot_filter(tmp_path, "User-agent: Applebot\nDisallow: /\n\nUser-agent: *\nAllow: /\n")
    args = ["check", "--snapshot", str(tmp_path / "snap"), "--agent", "Applebot-Extended", "https://a.eu/page"]
    main(args)
    assert "keep: no opt-out (robots.txt disallows it only under apertus)" in capsys.readouterr().out
    main(args + ["--semantics", "apertus"])
    assert "REMOVE: disallowed for Applebot-Extended (robots.txt disallows it only under apertus)" \
        in capsys.readouterr().out


def test_prepare_cli_mentions_documents_decided_differently(tmp_path):
    from eurotron.cli.prepare import _removals

    header = {"filters": {"enabled": True, "optout": {"robots": True, "robots_semantics": "apertus"}}}
    builder = ReportBuilder(header)
    builder.signal_counts({"robots_semantics:removed_only_by_rfc9309": 2})
    report = {**builder.to_json(), "policy": {"missing": "keep"}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    lines = _removals(str(tmp_path), {"report": {"json": "report.json", "markdown": "report.md"}})
    assert "  robots.txt: 2 documents would be decided differently under robots_semantics=rfc9309 " \
           "(report.json robots_semantics)" in lines


def test_rfc9309_agrees_with_protego_where_neither_departs():
    """Random groups, rules and paths without the points where the two differ ($, "=", other records
    between user-agent lines, prefix tokens): the decisions must be the same. Catches matcher bugs
    (wildcards, longest match, ties, merging, escapes) against an independent implementation."""
    import random

    rng = random.Random(7)
    pieces = ["a", "b", "/", "*", "?", "%61", "%2F", "%3f", ".", "é", "%C3%A9"]
    agents = ["GPTBot", "CCBot", "Bytespider", "*"]
    checked = 0
    for _ in range(1500):
        lines = []
        for _ in range(rng.randint(1, 7)):
            if rng.random() < 0.3:
                lines.append(f"User-agent: {rng.choice(['GPTBot', 'gptbot', '*', 'CCBot', 'Other'])}")
            else:
                value = "/" + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
                lines.append(f"{rng.choice(['Allow', 'Disallow'])}: {value if rng.random() < 0.9 else ''}")
        body = "\n".join(lines) + "\n"
        ours, parser = Rfc9309Rules(body.encode(), agents, True), Protego.parse(body)
        for _ in range(6):
            path = "/" + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
            protego = [a for a in agents if not parser.can_fetch("https://a.eu" + path, a)]
            assert ours.blocks("", path) is bool(protego), (body, path)
            checked += 1
    assert checked == 9000
