"""Opt-out filtering: robots.txt semantics through the filter, failure policies, TDMRep, domain lists."""

from __future__ import annotations

import json

import pytest

from eurotron.config import AI_CRAWLER_AGENTS
from eurotron.data.errors import DataError
from eurotron.data.filters.lists import DomainLists
from eurotron.data.filters.optout import OptOutFilter
from eurotron.data.filters.robots import POLICIES, decode_robots, resolve_policy
from eurotron.data.filters.snapshot import SnapshotStore
from eurotron.data.filters.tdmrep import TdmRepFile, decide, header_signal, html_signal
from eurotron.data.filters.urls import BadUrl, parse_url

FETCHED = "2025-01-15T10:00:00Z"


def write_snapshot(root, origins):
    """origins: origin → {"robots": fetch dict or None, "tdmrep": fetch dict or None}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "snapshot.json").write_text(json.dumps({"format": "eurotron-optout-snapshot", "format_version": 1,
                                                     "created": FETCHED}))
    with open(root / "origins.jsonl", "w") as handle:
        for origin, resources in origins.items():
            record = {"origin": origin, **{k: v for k, v in resources.items() if v is not None}}
            handle.write(json.dumps(record) + "\n")
    return SnapshotStore(root)


def robots(body, status=200):
    return {"status": status, "fetched": FETCHED, "body": body}


def make_filter(tmp_path, origins, agents=("GPTBot",), wildcard_group=True, policy="apertus", semantics="rfc9309",
                **overrides):
    store = write_snapshot(tmp_path / "snap", origins)
    return OptOutFilter(store, list(agents), wildcard_group, True, True, resolve_policy(policy, overrides), semantics)


def verdict(flt, url, headers=None, html=None):
    d = flt.check(url, parse_url(url), headers, html)
    return d.reason, d.agents if d.reason == "robots" else d.detail


# ------------------------------------------------------------------------------------- robots.txt
# What both semantics agree on; where they differ: test_data_robots_rfc9309.py.
SEMANTICS = pytest.mark.parametrize("semantics", ["rfc9309", "apertus"])


@SEMANTICS
def test_robots_longest_match_allow_tie_wildcards_and_end_anchor(tmp_path, semantics):
    body = "\n".join([
        "User-agent: GPTBot",
        "Disallow: /private/",
        "Allow: /private/open/",        # longer: wins inside /private/open/
        "Disallow: /tie/page",
        "Allow: /tie/page",             # equal length: Allow wins
        "Disallow: /*.pdf$",            # only URLs ending in .pdf
        "Disallow: /shop/*/checkout",   # * inside
        "Allow: /$",                    # the root page only
        "Disallow: /",
    ])
    flt = make_filter(tmp_path, {"https://a.eu": {"robots": robots(body)}}, semantics=semantics)
    site = "https://a.eu"
    assert verdict(flt, f"{site}/private/x") == ("robots", ["GPTBot"])
    # /private/open/x: Allow /private/open/ (15) beats Disallow /private/ (9) and Disallow / (1).
    assert verdict(flt, f"{site}/private/open/x")[0] is None
    assert verdict(flt, f"{site}/tie/page")[0] is None
    assert verdict(flt, f"{site}/") == (None, None)
    assert verdict(flt, f"{site}/other")[0] == "robots"  # Disallow: / (Allow /$ does not match)
    flt2 = make_filter(tmp_path / "b", {"https://b.eu": {"robots": robots(
        "User-agent: GPTBot\nDisallow: /*.pdf$\nDisallow: /shop/*/checkout\n")}}, semantics=semantics)
    assert verdict(flt2, "https://b.eu/doc/report.pdf")[0] == "robots"
    assert verdict(flt2, "https://b.eu/doc/report.pdf?v=2")[0] is None  # $ anchors the end
    assert verdict(flt2, "https://b.eu/doc/report.pdf.html")[0] is None
    assert verdict(flt2, "https://b.eu/shop/cart-7/checkout/step")[0] == "robots"
    assert verdict(flt2, "https://b.eu/shop/checkout")[0] is None
    # robots.txt itself may always be fetched (RFC 9309 §2.2.2), though "Disallow: /" covers it.
    assert verdict(flt, f"{site}/robots.txt") == (None, None)
    assert verdict(flt, f"{site}/robots.txt/x")[0] == "robots"


@SEMANTICS
def test_robots_agent_groups_case_and_product_tokens(tmp_path, semantics):
    body = "\n".join([
        "user-agent: gptbot",           # case-insensitive
        "Disallow: /a/",
        "",
        "User-agent: CCBot",
        "User-agent: ClaudeBot",        # one group, two agents
        "Disallow: /b/",
        "",
        "User-agent: *",
        "Disallow: /c/",
    ])
    agents = ["GPTBot", "CCBot/2.0", "ClaudeBot", "Bytespider", "*"]
    flt = make_filter(tmp_path, {"https://a.eu": {"robots": robots(body)}}, agents=agents, semantics=semantics)
    assert verdict(flt, "https://a.eu/a/1") == ("robots", ["GPTBot"])
    # "CCBot/2.0" matches the CCBot group by its product token; a specific group replaces `*`.
    assert verdict(flt, "https://a.eu/b/1") == ("robots", ["CCBot/2.0", "ClaudeBot"])
    # /c/ is only in the `*` group: Bytespider (no group of its own) and "*" itself are disallowed,
    # and the removal is credited to the group that decided: `*`.
    assert verdict(flt, "https://a.eu/c/1") == ("robots", ["*"])
    assert verdict(flt, "https://a.eu/d/1") == (None, None)


@SEMANTICS
def test_wildcard_group_is_a_choice(tmp_path, semantics):
    body = "User-agent: *\nDisallow: /\n\nUser-agent: GPTBot\nDisallow: /only-gpt/\n"
    origins = {"https://a.eu": {"robots": robots(body)}}
    apertus = make_filter(tmp_path / "1", origins, agents=AI_CRAWLER_AGENTS, semantics=semantics)
    assert verdict(apertus, "https://a.eu/page") == ("robots", ["*"])  # GPTBot's own group allows it
    assert verdict(apertus, "https://a.eu/only-gpt/x") == ("robots", ["*", "GPTBot"])
    named_only = make_filter(tmp_path / "2", origins, agents=AI_CRAWLER_AGENTS, wildcard_group=False,
                             semantics=semantics)
    assert verdict(named_only, "https://a.eu/page") == (None, None)
    assert verdict(named_only, "https://a.eu/only-gpt/x") == ("robots", ["GPTBot"])


def test_origins_are_scheme_host_and_port(tmp_path):
    origins = {"https://a.eu": {"robots": robots("User-agent: GPTBot\nDisallow: /\n")},
               "http://a.eu": {"robots": robots("User-agent: GPTBot\nAllow: /\n")},
               "https://a.eu:8443": {"robots": robots("User-agent: GPTBot\nAllow: /\n")}}
    flt = make_filter(tmp_path, origins)
    assert verdict(flt, "https://A.EU:443/x")[0] == "robots"  # default port, host case
    assert verdict(flt, "http://a.eu/x")[0] is None
    assert verdict(flt, "https://a.eu:8443/x")[0] is None


@pytest.mark.parametrize("policy, expected", [
    ("apertus", {"missing": None, "4xx": None, "5xx": None, "unreachable": None, "redirects": None, "garbage": None}),
    ("rfc9309", {"missing": "robots_policy", "4xx": None, "5xx": "robots_policy", "unreachable": "robots_policy",
                 "redirects": None, "garbage": None}),
    ("strict", {"missing": "robots_policy", "4xx": None, "5xx": "robots_policy", "unreachable": "robots_policy",
                "redirects": None, "garbage": "robots_policy"}),
])
def test_failure_policies(tmp_path, policy, expected):
    origins = {
        "https://4xx.eu": {"robots": {"status": 404, "fetched": FETCHED}},
        "https://5xx.eu": {"robots": {"status": 503, "fetched": FETCHED}},
        "https://unreachable.eu": {"robots": {"status": None, "error": "timeout after 10 s", "fetched": FETCHED}},
        "https://redirects.eu": {"robots": {"status": None, "error": "too many redirects (more than 5)",
                                            "fetched": FETCHED}},
        "https://garbage.eu": {"robots": robots("<!DOCTYPE html><html><body>Not found</body></html>")},
    }
    flt = make_filter(tmp_path, origins, policy=policy)
    for name, want in expected.items():
        reason, detail = verdict(flt, f"https://{name}.eu/page")
        assert reason == want, (policy, name)
        case = {"garbage": "unparsable", "unreachable": "5xx", "redirects": "4xx"}.get(name, name)
        assert flt.check(f"https://{name}.eu/p", parse_url(f"https://{name}.eu/p")).robots_case == case
        if want:
            assert detail == case


def test_policy_overrides_and_bad_values(tmp_path):
    policy = resolve_policy("apertus", {"5xx": "remove", "missing": None})
    assert policy["5xx"] == "remove" and policy["missing"] == POLICIES["apertus"]["missing"]
    with pytest.raises(DataError, match="on_4xx='drop'"):
        resolve_policy("apertus", {"4xx": "drop"})
    with pytest.raises(DataError, match="policy='lenient'"):
        resolve_policy("lenient", {})


def test_unparsable_robots_detection():
    assert decode_robots(b"") == ""  # empty: no rules, fine
    assert decode_robots(b"# only comments\n") is not None
    assert decode_robots(b"User-agent: *\nDisallow: /x\n") is not None
    assert decode_robots(b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n").startswith("User-agent")
    assert decode_robots(b"useragent *\ndisallow /x\n") is not None  # lenient spellings still parse
    assert decode_robots(b"<html><body>hello</body></html>") is None
    assert decode_robots(b"\x89PNG\r\n\x1a\n\x00\x00") is None
    assert decode_robots(b"just some words\nand more words\n") is None


# ------------------------------------------------------------------------------------------ TDMRep
def test_tdmrep_rules_first_match_and_patterns():
    rules = TdmRepFile(json.dumps([
        {"location": "/free/*", "tdm-reservation": 0},
        {"location": "/*.pdf$", "tdm-reservation": 1, "tdm-policy": "https://a.eu/policy.json"},
        {"location": "/", "tdm-reservation": 1},
        {"location": "no-slash", "tdm-reservation": 1},  # invalid: skipped, counted
        {"tdm-reservation": 1},
    ]).encode())
    assert rules.invalid_rules == 2
    assert rules.match("/free/a.pdf").reserved is False  # first match wins
    assert rules.match("/docs/a.pdf").policy == "https://a.eu/policy.json"
    assert rules.match("/docs/page").reserved is True
    for body in (b"{not json", b'{"location": "/"}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            TdmRepFile(body)


def test_tdmrep_precedence_well_known_then_headers_then_html(tmp_path):
    reserved_file = {"status": 200, "fetched": FETCHED, "body": json.dumps(
        [{"location": "/open/", "tdm-reservation": 0}, {"location": "/closed/", "tdm-reservation": 1}])}
    origins = {"https://a.eu": {"robots": {"status": 404, "fetched": FETCHED}, "tdmrep": reserved_file},
               "https://b.eu": {"robots": {"status": 404, "fetched": FETCHED},
                                "tdmrep": {"status": 404, "fetched": FETCHED}}}
    flt = make_filter(tmp_path, origins)
    header_1, header_0 = {"TDM-Reservation": "1"}, {"tdm-reservation": "0"}
    html_1 = '<html><head><META content="1" name="tdm-reservation"></head></html>'
    html_0 = "<html><head><meta name='tdm-reservation' content='0'></head></html>"
    # The well-known file decides where it has a rule, whatever headers and HTML say.
    assert verdict(flt, "https://a.eu/open/x", header_1, html_1) == (None, None)
    assert verdict(flt, "https://a.eu/closed/x", header_0, html_0) == ("tdmrep", "well_known")
    # No matching rule (or no file): headers, then HTML.
    assert verdict(flt, "https://a.eu/other", header_1, html_0) == ("tdmrep", "header")
    assert verdict(flt, "https://b.eu/x", header_0, html_1) == (None, None)
    assert verdict(flt, "https://b.eu/x", None, html_1) == ("tdmrep", "html")
    assert verdict(flt, "https://b.eu/x", [("tdm-reservation", "1"), ("tdm-policy", "https://b.eu/p")]) \
        == ("tdmrep", "header")
    assert verdict(flt, "https://b.eu/x", {"tdm-reservation": "maybe"}, "<p>tdm-reservation</p>") == (None, None)
    assert header_signal({"tdm-reservation": 1, "tdm-policy": "https://x"}).policy == "https://x"
    assert html_signal('<meta name="tdm-policy" content="https://p"><meta name="tdm-reservation" content=1>').policy \
        == "https://p"
    assert decide(None, "/", None, None) is None


def test_unreadable_tdmrep_follows_the_policy(tmp_path):
    origins = {"https://a.eu": {"robots": robots("User-agent: *\nAllow: /\n"),
                                "tdmrep": {"status": 200, "fetched": FETCHED, "body": "{oops"}}}
    keep = make_filter(tmp_path / "k", origins)
    d = keep.check("https://a.eu/x", parse_url("https://a.eu/x"), {"tdm-reservation": "1"})
    assert d.tdmrep_status == "unreadable" and d.reason == "tdmrep" and d.detail == "header"
    assert verdict(keep, "https://a.eu/x") == (None, None)
    remove = make_filter(tmp_path / "r", origins, tdmrep_unreadable="remove")
    assert verdict(remove, "https://a.eu/x") == ("tdmrep_policy", "unreadable")


# ------------------------------------------------------------------------------------ URLs, lists
def test_urls():
    assert parse_url("HTTPS://Www.Example.EU:443/a?b=1#frag").origin == "https://www.example.eu"
    assert parse_url("http://münchen.de/x").host == "xn--mnchen-3ya.de"
    assert parse_url("https://a.eu").path == "/"
    # A bare "?" stays (RFC 9309 rules match it), on the slow path (non-ASCII host) as on the fast one.
    assert parse_url("https://a.eu/x?#f").path == parse_url("https://münchen.de/x?").path == "/x?"
    for value, kind in ((None, "no_url"), ("", "no_url"), ("ftp://a.eu/x", "non_http_url"),
                        ("mailto:a@b.eu", "non_http_url"), ("https://", "bad_url"), ("http://a.eu:99999/", "bad_url"),
                        (42, "bad_url"), ("www.a.eu/page", "non_http_url")):
        with pytest.raises(BadUrl) as info:
            parse_url(value)
        assert info.value.kind == kind, value


def test_domain_lists(tmp_path):
    (tmp_path / "block.txt").write_text("# blocked\nexample.eu\n*.spam.eu\nhttps://bad.org/path\n")
    (tmp_path / "allow.txt").write_text("open.example.eu\nfine.eu  # comment\n")
    both = DomainLists(str(tmp_path / "block.txt"), str(tmp_path / "allow.txt"))
    assert both.check("www.example.eu") == "blocklist"
    assert both.check("www.open.example.eu") is None  # most specific wins
    assert both.check("x.spam.eu") == "blocklist" and both.check("bad.org") == "blocklist"
    assert both.check("fine.eu") is None and both.check("elsewhere.eu") == "not_allowlisted"
    block_only = DomainLists(str(tmp_path / "block.txt"))
    assert block_only.check("elsewhere.eu") is None
    (tmp_path / "bad.txt").write_text("ok.eu\nftp://x.eu\n")
    with pytest.raises(DataError, match=r"bad\.txt:2"):
        DomainLists(str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match="no such file"):
        DomainLists(str(tmp_path / "missing.txt"))
