"""Reply classification: final or not, hard or soft, whose fault, rate limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shaper.replies import Verdict, classify, parse_enhanced


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 User unknown", "5.1.1"),
        ("5.1.10 Recipient address has null MX", "5.1.10"),
        ("4.7.28 Unusual rate", "4.7.28"),
        ("  2.0.0 OK", "2.0.0"),
        ("550 5.1.1 whole line", "5.1.1"),
        ("550-5.7.1 continuation line", "5.7.1"),
        ("5.1.01 leading zero", "5.1.1"),
        ("5.1.1", "5.1.1"),
        ("5.1.1, no such user", "5.1.1"),
        ("User unknown 5.1.1", None),  # not at the start
        ("5.1.1.2 not a status code", None),
        ("5.1.1234 too long", None),
        ("6.1.1 not a class", None),
        ("3.1.1 not a class", None),
        ("5.1 too short", None),
        ("", None),
        ("Connection frequency limited", None),
    ],
)
def test_parse_enhanced(text: str, expected: str | None) -> None:
    assert parse_enhanced(text) == expected


HARD = Verdict(permanent=True, bounce="hard", due_to_message=True, rate_limited=False)
SOFT_MESSAGE = Verdict(permanent=True, bounce="soft", due_to_message=True, rate_limited=False)
SOFT_DESTINATION = Verdict(permanent=True, bounce="soft", due_to_message=False, rate_limited=False)
TEMP_MESSAGE = Verdict(permanent=False, bounce=None, due_to_message=True, rate_limited=False)
TEMP_DESTINATION = Verdict(permanent=False, bounce=None, due_to_message=False, rate_limited=False)
RATE_LIMITED = Verdict(permanent=False, bounce=None, due_to_message=False, rate_limited=True)


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "expected"),
    [
        # 5xx: final. Hard only when the recipient address is bad.
        (550, "5.1.1", "The email account that you tried to reach does not exist", HARD),
        (550, None, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown", HARD),
        (556, None, "5.1.10 Recipient address has null MX", HARD),
        (553, "5.1.3", "Bad recipient address syntax", HARD),
        (550, "5.1.2", "Host unknown", HARD),
        (550, None, "No such user here", HARD),
        (550, None, "Requested action not taken: mailbox unavailable", SOFT_MESSAGE),
        (550, "5.0.0", "User unknown", HARD),  # generic X.0.x: the text decides
        (
            553,
            None,
            "Sender address does not exist",
            SOFT_MESSAGE,
        ),  # the sender's, not the recipient's
        (550, "5.1.8", "Sender address rejected: Domain not found", SOFT_MESSAGE),
        (550, "5.1.7", "Bad sender mailbox syntax", SOFT_MESSAGE),
        (552, "5.2.2", "The email account that you tried to reach is over quota", SOFT_MESSAGE),
        (550, "5.2.1", "The email account that you tried to reach is disabled", SOFT_MESSAGE),
        (552, "5.3.4", "Message size exceeds fixed limit", SOFT_MESSAGE),
        (552, None, "Message size exceeds maximum permitted", SOFT_MESSAGE),
        (554, "5.6.0", "Message contains invalid header", SOFT_MESSAGE),
        (550, "5.7.1", "Message rejected due to local policy", SOFT_DESTINATION),
        (
            554,
            "5.7.1",
            "Service unavailable; Client host blocked using zen.spamhaus.org",
            SOFT_DESTINATION,
        ),
        (550, "5.7.26", "Unauthenticated email is not accepted from this domain", SOFT_DESTINATION),
        (554, "5.4.6", "Too many hops", SOFT_DESTINATION),  # a loop, not a rate limit
        (554, "5.3.0", "Mail system error", SOFT_DESTINATION),
        (554, None, "Transaction failed", SOFT_DESTINATION),
        (500, None, "Syntax error, command unrecognised", SOFT_DESTINATION),
        # 5xx that are really rate limits: never a bounce.
        (
            550,
            None,
            "Connection frequency limited. http://service.mail.qq.com/cgi-bin/help?subtype=1",
            RATE_LIMITED,
        ),
        (550, None, "Ip frequency limited", RATE_LIMITED),
        (550, "5.7.1", "Rate limit exceeded, try again later", RATE_LIMITED),
        (554, None, "Too many connections from your IP", RATE_LIMITED),
        (550, None, "Service busy, please try again later", RATE_LIMITED),
        (550, "5.7.0", "You have been throttled", RATE_LIMITED),
        # 4xx: temporary; rate limits flagged.
        (
            421,
            "4.7.0",
            "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
            RATE_LIMITED,
        ),
        (
            421,
            "4.7.28",
            "Our system has detected an unusual rate of unsolicited mail",
            RATE_LIMITED,
        ),
        (421, None, "4.7.28 Gmail has detected an unusual rate", RATE_LIMITED),
        (
            451,
            "4.7.650",
            "The mail server has been temporarily rate limited due to IP reputation. (S843)",
            RATE_LIMITED,
        ),
        (
            451,
            None,
            "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)",
            RATE_LIMITED,
        ),
        (421, None, "Too many concurrent SMTP connections; please try again later", RATE_LIMITED),
        (452, "4.5.3", "Too many recipients", RATE_LIMITED),
        (421, None, "Ratelimited", RATE_LIMITED),
        (451, None, "4.7.1 Please slow down", RATE_LIMITED),
        (421, "4.3.2", "Service not available, closing transmission channel", TEMP_DESTINATION),
        (
            421,
            "4.2.1",
            "Odd enhanced code on a 421",
            TEMP_DESTINATION,
        ),  # 421 is always the destination
        (451, "4.3.0", "Temporary local problem", TEMP_DESTINATION),
        (451, None, "Requested action aborted: local error in processing", TEMP_DESTINATION),
        (452, None, "Insufficient system storage", TEMP_DESTINATION),
        (
            450,
            "4.2.1",
            "The user you are trying to contact is receiving mail at a rate that prevents "
            "additional messages from being delivered",
            TEMP_MESSAGE,
        ),
        (452, "4.2.2", "Mailbox full", TEMP_MESSAGE),
        (450, None, "Mailbox unavailable", TEMP_MESSAGE),
        (451, "4.7.1", "Greylisted, please come back", TEMP_DESTINATION),
        (450, "4.1.8", "Sender domain does not resolve", TEMP_MESSAGE),
        # no reply at all: connection refused, timeout, TLS failure
        (None, None, "Connection refused", TEMP_DESTINATION),
        (None, None, "timed out waiting for the greeting", TEMP_DESTINATION),
        # broken servers: odd codes are retried, not bounced
        (354, None, "Start mail input", TEMP_DESTINATION),
        (600, None, "garbage", TEMP_DESTINATION),
    ],
)
def test_classify_table(
    code: int | None, enhanced: str | None, text: str, expected: Verdict
) -> None:
    assert classify(code, enhanced, text) == expected


def test_success_is_not_a_failure() -> None:
    with pytest.raises(ValueError):
        classify(250, "2.0.0", "OK")


def test_temporary_is_the_opposite_of_permanent() -> None:
    assert classify(550, "5.1.1", "x").temporary is False
    assert classify(451, None, "x").temporary is True


codes = st.one_of(st.none(), st.integers(min_value=400, max_value=599))
enhanced_codes = st.one_of(
    st.none(),
    st.builds(
        "{}.{}.{}".format,
        st.sampled_from("45"),
        st.integers(min_value=0, max_value=9),
        st.integers(min_value=0, max_value=30),
    ),
)


@given(codes, enhanced_codes, st.text(max_size=200))
def test_verdicts_are_consistent(code: int | None, enhanced: str | None, text: str) -> None:
    verdict = classify(code, enhanced, text)
    # Only a 5xx is ever final, and every final verdict is labelled hard or soft.
    assert verdict.permanent == (verdict.bounce is not None)
    assert verdict.bounce in (None, "hard", "soft")
    if verdict.permanent:
        assert code is not None and 500 <= code < 600
    if code is not None and 400 <= code < 500:
        assert not verdict.permanent
    # A rate limit is never a bounce and never the message's fault.
    if verdict.rate_limited:
        assert not verdict.permanent and not verdict.due_to_message
    if code is None:
        assert verdict == TEMP_DESTINATION


@given(
    st.sampled_from([421, 451, 550, 554]),
    st.sampled_from(
        ["rate limited", "TSS04", "S843", "4.7.28", "frequency limited"]
    ),
)
def test_rate_limit_signs_win_over_the_code(code: int, sign: str) -> None:
    assert classify(code, None, f"Sorry, {sign} (see our postmaster page)").rate_limited


@pytest.mark.parametrize("code, text, expected", [
    (421, "4.7.0 Too many connections from your IP", "connections"),
    (421, "4.7.0 Too many concurrent SMTP connections", "connections"),
    (421, "4.7.28 Our system has detected an unusual rate of mail", "rate"),
    (451, "4.7.1 Rate limited, try again later", "rate"),
    (421, "4.7.0 [TSS04] Messages temporarily deferred", "rate"),
    (550, "Connection frequency limited", "rate"),
    (550, "5.1.1 user unknown", None),
    (451, "4.3.0 Temporary failure", None),
    (None, "connection refused", None),
])
def test_slow_down_tells_connections_from_rate(code, text, expected):
    from shaper.replies import slow_down
    assert slow_down(code, text) == expected


# Greylisting (RFC 6647) refuses a new (client, sender, recipient) triple for a while: the
# retry is what it asks for, not a slower pace. Real-world wordings of both kinds.
GREYLISTING = [
    (451, "4.7.1 Try again later"),  # rspamd's greylist module
    (451, "4.7.1 Greylisting in action, please come back later"),
    (451, "4.7.1 Greylisting in action, please come back in 00:05:00"),  # milter-greylist
    (450, "4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, see "
          "http://postgrey.schweikert.ch/help/example.com.html"),  # Postgrey
    (450, "4.7.1 <bob@example.com>: Recipient address rejected: Greylisted for 300 seconds"),
    (451, "Greylisted for 5 minutes (2)"),  # SQLgrey
    (451, "4.7.1 Please try again later"),  # greylistd under Exim
    (450, "4.7.1 Client host rejected: Greylisted, try again later"),
    (451, "4.7.1 You have been greylisted, too many new senders; try again later"),  # greylisting wins
    (421, "4.7.0 Try again later, closing connection."),  # Gmail's generic deferral
]
RATE_REPLIES = [
    (421, "4.7.0 Too many messages, slow down", "rate"),
    (421, "4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your IP "
          "address. To protect our users from spam, mail sent from your IP address has been "
          "temporarily rate limited.", "rate"),
    (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
          "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "rate"),
    (451, "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
          "reputation. (S843)", "rate"),
    (451, "4.7.1 Rate limited, try again later", "rate"),
    (550, "5.7.1 Rate limit exceeded, try again later", "rate"),
    (451, "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)", "rate"),
    (421, "4.7.0 Too many concurrent SMTP connections; please try again later", "connections"),
]


@pytest.mark.parametrize("code, text", GREYLISTING)
def test_greylisting_does_not_slow_the_destination(code, text):
    from shaper.replies import slow_down
    assert slow_down(code, text) is None
    verdict = classify(code, None, text)
    assert verdict.temporary and not verdict.rate_limited


@pytest.mark.parametrize("code, text, expected", RATE_REPLIES)
def test_rate_replies_still_slow_the_destination(code, text, expected):
    from shaper.replies import slow_down
    assert slow_down(code, text) == expected
    assert classify(code, None, text) == RATE_LIMITED


@given(st.sampled_from([550, 554]), st.text(max_size=40))
def test_a_5xx_that_says_try_again_later_is_never_a_bounce(code: int, words: str) -> None:
    assert classify(code, None, f"{words} please try again later").temporary
