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
