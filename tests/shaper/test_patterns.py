"""Operators' response patterns: first match wins; code and enhanced conditions."""

import pytest

from shaper.patterns import Patterns


def rules():
    return Patterns([
        Patterns.compile(0, "suspend", "TSS04", duration=7200.0),
        Patterns.compile(1, "throttle", "(?i)rate limit|too many", code=421, duration=5400.0, payload="slow"),
        Patterns.compile(2, "bounce", None, enhanced="4.2.2"),
        Patterns.compile(3, "retry", "(?i)spam", code=554),
    ])


@pytest.mark.parametrize("code, enhanced, text, index", [
    (421, None, "4.7.0 [TSS04] Messages temporarily deferred", 0),
    (451, None, "TSS04 deferred", 0),
    (421, "4.7.0", "4.7.0 Too many connections", 1),
    (450, None, "4.7.0 too many connections", None),      # code condition fails
    (452, "4.2.2", "4.2.2 mailbox full", 2),
    (554, "5.7.1", "5.7.1 looks like spam", 3),
    (250, None, "ok", None),
])
def test_first_matching_rule(code, enhanced, text, index):
    rule = rules().find(code, enhanced, text)
    assert (rule.index if rule else None) == index


def test_the_regex_sees_the_code_too():
    p = Patterns([Patterns.compile(0, "suspend", r"^421 ", duration=60.0)])
    assert p.find(421, None, "4.7.0 bye") is not None
    assert p.find(451, None, "4.7.0 bye") is None


def test_describe_names_the_rule():
    assert rules().rules[1].describe() == "patterns[1] code 421 match '(?i)rate limit|too many'"


def test_bad_rules_are_refused():
    with pytest.raises(ValueError):
        Patterns([Patterns.compile(0, "explode", "x")])
    with pytest.raises(ValueError):
        Patterns([Patterns.compile(0, "suspend", "x")])


# ---- a receiver's text is nobody's to trust

from shaper.patterns import REPLY_TEXT_LIMIT, nested_quantifier  # noqa: E402


def test_the_matcher_sees_only_the_first_512_bytes_of_a_reply():
    p = Patterns([Patterns.compile(0, "suspend", "TSS04", duration=60.0)])
    assert p.find(421, None, "4.7.0 " + "x" * 400 + " TSS04") is not None
    assert p.find(421, None, "4.7.0 " + "x" * 600 + " TSS04") is None
    wide = "é" * 255 + "TSS04"  # 510 bytes of text before it: the marker straddles byte 512
    assert p.find(421, None, wide) is None
    assert p.find(421, None, "é" * 250 + "TSS04") is not None  # 500 + 5 bytes


def test_a_huge_reply_costs_what_512_bytes_cost():
    """A quadratic regex over a 1 MB reply would take minutes; over 512 bytes it is instant."""
    p = Patterns([Patterns.compile(0, "bounce", r"(?:a+){2}b")])
    assert p.find(550, None, "a" * 1_000_000) is None
    assert REPLY_TEXT_LIMIT == 512


@pytest.mark.parametrize("regex", [
    "(a+)+", "(a*)*", "(.*a){20}", "(.*)*", "(?:x|(y+))+", "(\\w+\\s?)+$", "(?i)(spam.*)+ detected",
    "((ab)*c+)+", "(?=(a+))+",
])
def test_nested_quantifiers_are_named(regex):
    assert nested_quantifier(regex) is not None


@pytest.mark.parametrize("regex", [
    "TSS04", "(?i)rate limit|too many", r"\bTSS0[14]\b", r"\(S8[0-9]{2}\)|\b4\.7\.650\b",
    r"(?:\d{1,3}\.){3}\d{1,3}", "(a|b)*c", "(?>a+)+", "(a++)+", "(?:a+){2}", "a{2,5}b+",
    "(?i)too many (connections|concurrent|simultaneous)", "[a-", "",
])
def test_ordinary_patterns_pass(regex):
    assert nested_quantifier(regex) is None
