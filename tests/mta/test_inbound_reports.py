"""Reading what arrives on an inbound listener: DSNs, non-standard bounces, feedback
reports, auto-replies and junk, from realistic samples in tests/samples/reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.inbound.mime import MAX_SCAN
from mta.inbound.reports import Report, VerpConfig, parse_report
from mta.inbound.status import DIAGNOSTIC_MAX, judge

SAMPLES = Path(__file__).parent.parent / "samples" / "reports"
VERP = VerpConfig(prefix="bounces", domain="bounces.example", separator="+")


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def read(name: str, envelope_recipient: str | None = None) -> Report:
    return parse_report(sample(name), envelope_recipient, VERP)


def test_gmail_dsn_is_a_hard_bounce_with_the_multiline_reply_said_once() -> None:
    report = read("gmail.eml", "bounces+7f3c1a52-9b1e-4c57-8d2a-1e4f5a6b7c8d=nobody.here=gmail.com@bounces.example")
    assert (report.kind, report.reason, report.reporting_mta) == ("bounce", "RFC 3464 DSN", "googlemail.com")
    [failure] = report.recipients
    assert (failure.recipient, failure.action, failure.status, failure.hard) == (
        "nobody.here@gmail.com", "failed", "5.1.1", True)
    assert failure.diagnostic.startswith("550 5.1.1 The email account that you tried to reach does not exist. "
                                         "Please try double-checking the recipient's email address")
    assert "550-5.1.1" not in failure.diagnostic
    assert report.message_id == "<20261130161458.4f1c2d@shop.example>"
    assert report.mta_id == "7f3c1a52-9b1e-4c57-8d2a-1e4f5a6b7c8d"
    assert report.original_recipient == "nobody.here@gmail.com"


def test_outlook_dsn_with_html_first_reads_its_delivery_status_and_returned_headers() -> None:
    # The envelope recipient's domain arrives upper-cased: still our VERP address.
    report = read("outlook.eml", "bounces+a1b2c3d4-0000-4000-8000-00000000beef=missing.person=outlook.com@BOUNCES.EXAMPLE")
    [failure] = report.recipients
    assert (report.kind, failure.recipient, failure.status, failure.hard) == (
        "bounce", "missing.person@outlook.com", "5.1.10", True)
    assert failure.diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound;")
    assert report.message_id == "<20261201094105.77aa@news.example>"  # from text/rfc822-headers
    assert report.mta_id == "a1b2c3d4-0000-4000-8000-00000000beef"
    assert report.reporting_mta == "AM9P194MB1234.EURP194.PROD.OUTLOOK.COM"


def test_yahoo_plain_bounce_without_enhanced_code_is_hard_by_its_words() -> None:
    report = read("yahoo.eml")  # no envelope given: the returned copy's Return-Path is VERP
    [failure] = report.recipients
    assert (report.kind, report.reason) == ("bounce", "yahoo bounce")
    assert (failure.recipient, failure.status, failure.hard) == ("gone.user@yahoo.com", "5.1.1", True)
    assert failure.diagnostic.startswith("554: delivery error: dd This user doesn't have a yahoo.com account")
    assert report.message_id == "<20261201110240.9c1d@shop.example>"
    assert report.mta_id == "0b9e8d7c-6a5f-4e3d-9c2b-1a0f9e8d7c6b"


def test_qmail_bounce_names_each_recipient_with_its_own_reason() -> None:
    # A line of the returned copy that looks like a recipient paragraph is not one.
    report = parse_report(sample("qmail.eml") + b"\n<quoted@example.org>: a line of the returned message\n")
    assert (report.kind, report.reason) == ("bounce", "qmail bounce")
    local, remote = report.recipients
    assert (local.recipient, local.status, local.hard) == ("nobody@example.net", "5.1.1", True)
    assert local.diagnostic == "Sorry, no mailbox here by that name. (#5.1.1)"
    assert (remote.recipient, remote.status, remote.hard) == ("forwarded@example.net", "5.1.1", True)
    assert remote.diagnostic.startswith("550 5.1.1 <forwarded@elsewhere.example>: Recipient address rejected")
    # No VERP: the copy below the report says which message, and our id if it carried one.
    assert (report.message_id, report.mta_id) == ("<20261201121001.5531@shop.example>", "order-5531")
    assert (report.original_sender, report.original_recipient) == ("orders@shop.example", None)


def test_exim_bounce_takes_the_remote_reply_as_diagnostic() -> None:
    report = read("exim.eml", "bounces+2d4c6e8a-1b3d-4f5a-9c7e-0a2b4c6d8e0f=someone=example.org@bounces.example")
    [failure] = report.recipients
    assert (report.kind, report.reason) == ("bounce", "exim bounce")
    assert (failure.recipient, failure.status, failure.hard) == ("someone@example.org", "5.1.1", True)
    assert failure.diagnostic == ("550 5.1.1 <someone@example.org>: Recipient address rejected: "
                                  "User unknown in virtual mailbox table")
    assert report.message_id == "<20261201132029.aa01@shop.example>"
    assert report.mta_id == "2d4c6e8a-1b3d-4f5a-9c7e-0a2b4c6d8e0f"


def test_exim_delay_warning_is_a_delay() -> None:
    report = read("exim_delay.eml")
    [late] = report.recipients
    assert (report.kind, report.reason) == ("delay", "exim delay warning")
    assert (late.recipient, late.action, late.status, late.hard) == ("slow@example.org", "delayed", "4.7.1", False)
    assert late.diagnostic == "451 4.7.1 Greylisted, please try again later"


def test_a_bounce_in_another_language_is_read_by_its_x_failed_recipients() -> None:
    report = read("exim_german.eml")
    [failure] = report.recipients
    assert (report.kind, report.reason) == ("bounce", "a bounce naming its recipients in X-Failed-Recipients")
    assert (failure.recipient, failure.status, failure.hard) == ("weg@example.de", "5.1.1", True)
    assert failure.diagnostic == "550 5.1.1 <weg@example.de>: Empfänger unbekannt"  # quoted-printable, Latin-1


def test_several_x_failed_recipients_get_no_borrowed_status() -> None:
    data = sample("exim_german.eml").replace(b"X-Failed-Recipients: weg@example.de",
                                             b"X-Failed-Recipients: weg@example.de, auch@example.de")
    report = parse_report(data)
    assert [(r.recipient, r.status, r.hard) for r in report.recipients] == [
        ("weg@example.de", None, False), ("auch@example.de", None, False)]


def test_old_postfix_plain_bounce_unwraps_its_continuation_lines() -> None:
    report = read("postfix_plain.eml")
    [failure] = report.recipients
    assert (report.kind, report.reason) == ("bounce", "postfix bounce")
    assert (failure.recipient, failure.status, failure.hard) == ("jdoe@example.com", "5.1.1", True)
    assert failure.diagnostic == ("550 5.1.1 <jdoe@example.com>: Recipient address rejected: User unknown "
                                  "in local recipient table (in reply to RCPT TO command)")
    assert report.message_id is None and report.mta_id is None  # no copy returned, no VERP


def test_postfix_dsn_with_two_recipients_one_hard_one_full() -> None:
    report = read("postfix_dsn.eml")
    alice, bob = report.recipients
    assert report.kind == "bounce"
    assert (alice.recipient, alice.status, alice.hard, alice.remote_mta) == (
        "alice@example.com", "5.1.1", True, "mx1.example.com")
    assert (bob.recipient, bob.action, bob.status, bob.hard) == ("bob@example.com", "failed", "5.2.2", False)
    assert bob.diagnostic == "552 5.2.2 <bob@example.com>: Mailbox full"
    assert report.envelope_id == "3c2b1a09-8f7e-4d6c-b5a4-938271605f4e"
    assert (report.message_id, report.mta_id) == ("<20261201143037.team@shop.example>", "invite-881")
    assert report.original_recipient is None  # two recipients: the report names each


def test_delayed_dsn_is_a_delay_not_a_bounce() -> None:
    report = read("postfix_delay.eml")
    [late] = report.recipients
    assert report.kind == "delay"
    assert (late.recipient, late.action, late.status, late.hard) == ("carol@example.com", "delayed", "4.2.2", False)


def test_a_5_1_1_that_speaks_of_blocking_and_spam_is_not_hard() -> None:
    report = read("spam_blocked.eml")
    [failure] = report.recipients
    assert (report.kind, failure.status, failure.hard) == ("bounce", "5.1.1", False)
    assert "blocked" in failure.diagnostic and report.mta_id == "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"


@pytest.mark.parametrize("words", ["550 5.1.1 rate limit exceeded", "550 5.1.1 SPAM detected",
                                   "550 5.1.1 rejected by policy", "550 5.1.1 Blocked: listed at zen",
                                   "550 5.7.1 user unknown", "452 4.1.1 user unknown later",
                                   # about our sender, not the recipient (a VERP domain without MX)
                                   "550 5.1.0 <bounces+x=a=example.org@bounces.example>: Sender address rejected: "
                                   "Domain not found", "553 5.1.0 sender verify failed"])
def test_not_hard_despite_looking_like_it(words: str) -> None:
    assert judge("a@example.org", "failed", None, words).hard is False


def test_a_status_the_remote_reply_contradicts_is_not_hard() -> None:
    failure = judge("a@example.org", "failed", "5.1.1", "550 5.7.1 Message rejected due to content restrictions")
    assert (failure.status, failure.hard) == ("5.1.1", False)


@pytest.mark.parametrize("words, status", [("550 5.1.1 user unknown", "5.1.1"), ("550 5.1.2 bad domain", "5.1.2"),
                                           ("550 5.1.10 RecipientNotFound", "5.1.10"),
                                           ("550 no such user here", None), ("550 5.1.3 corporate address", "5.1.3")])
def test_hard(words: str, status: str | None) -> None:
    failure = judge("a@example.org", "failed", None, words)
    assert (failure.hard, failure.status) == (True, status)


def test_the_diagnostic_is_cut_to_512_octets_between_characters() -> None:
    failure = judge("a@example.org", "failed", "5.1.1", "550 5.1.1 " + "é" * 600)
    assert len(failure.diagnostic.encode("utf-8")) <= DIAGNOSTIC_MAX
    assert len(failure.diagnostic.encode("utf-8")) >= DIAGNOSTIC_MAX - 1


def test_yahoo_style_arf_complaint_names_the_recipient_and_the_message_by_verp() -> None:
    report = read("arf_yahoo.eml", "fbl@bounces.example")
    assert (report.kind, report.feedback_type) == ("complaint", "abuse")
    assert [r.recipient for r in report.recipients] == ["frank@yahoo.com"]
    assert (report.source_ip, report.user_agent) == ("198.51.100.21", "Yahoo!-Mail-Feedback/2.0")
    assert report.message_id == "<20261202091200.deals@news.example>"
    assert report.mta_id == "c0ffee00-1111-4222-8333-444455556666"  # from Original-Mail-From
    assert report.original_recipient == "frank@yahoo.com"


def test_microsoft_jmrp_takes_the_recipient_from_the_copy() -> None:
    report = read("arf_microsoft.eml", "jmrp@bounces.example")
    assert (report.kind, report.feedback_type, report.user_agent) == ("complaint", "abuse", "Hotmail FBL")
    assert [r.recipient for r in report.recipients] == ["grace@hotmail.com"]  # X-HmXmrOriginalRecipient
    assert report.source_ip == "198.51.100.21"
    assert (report.message_id, report.mta_id) == (
        "<20261202195838.deals@news.example>", "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6")


def test_a_redacted_complaint_is_named_by_the_verp_sender() -> None:
    data = sample("arf_microsoft.eml").replace(b"X-HmXmrOriginalRecipient: <grace@hotmail.com>\n", b"")
    data = data.replace(b"Original-Mail-From: <news@news.example>",
                        b"Original-Mail-From: <bounces+0d1e2f3a=grace=hotmail.com@bounces.example>")
    report = parse_report(data, "jmrp@bounces.example", VERP)
    assert (report.kind, [r.recipient for r in report.recipients]) == ("complaint", ["grace@hotmail.com"])
    assert report.mta_id == "0d1e2f3a"  # the envelope's VERP id before the copy's X-Mta-Id header
    assert parse_report(data).recipients == ()  # without VERP, nobody is named


@pytest.mark.parametrize("kind", ["not-spam", "auth-failure"])
def test_feedback_that_is_no_complaint_is_kept_as_unknown(kind: str) -> None:
    data = sample("arf_yahoo.eml").replace(b"Feedback-Type: abuse", f"Feedback-Type: {kind}".encode())
    report = parse_report(data, "fbl@bounces.example", VERP)
    assert (report.kind, report.feedback_type) == ("unknown", kind)


def test_arf_complaint_without_rcpt_to_takes_the_copys_single_to() -> None:
    data = sample("arf_yahoo.eml").replace(b"Original-Rcpt-To: <frank@yahoo.com>\n", b"")
    data = data.replace(b"Original-Mail-From: <bounces+", b"Original-Mail-From: <other+")
    data = data.replace(b"Return-Path: <bounces+", b"Return-Path: <other+")
    report = parse_report(data)
    assert (report.kind, [r.recipient for r in report.recipients]) == ("complaint", ["frank@yahoo.com"])
    assert report.mta_id is None


def test_out_of_office_is_an_auto_reply_not_a_bounce() -> None:
    report = read("out_of_office.eml", "bounces+77777777-8888-4999-aaaa-bbbbccccdddd=heidi=corp.example@bounces.example")
    assert (report.kind, report.reason, report.recipients) == ("auto_reply", "Auto-Submitted: auto-replied", ())
    assert (report.mta_id, report.original_recipient) == ("77777777-8888-4999-aaaa-bbbbccccdddd", "heidi@corp.example")


@pytest.mark.parametrize("header", [b"X-Autoreply: yes", b"Precedence: auto_reply", b"Subject: Out of Office: hi",
                                    b"Subject: Automatic reply: hi", b"Auto-Submitted: auto-generated"])
def test_signs_of_an_auto_reply(header: bytes) -> None:
    data = b"From: a@example.org\nTo: b@example.org\n" + header + b"\n\nAway.\n"
    assert parse_report(data).kind == "auto_reply"


@pytest.mark.parametrize("subject, sign", [
    (b"Automatic reply: Delivery status of your order 1234", b"Auto-Submitted: auto-replied"),
    (b"Out of Office: Your parcel was not delivered", b"X-MS-Exchange-Inbox-Rules-Loop: heidi@corp.example"),
    (b"Re: Delivery problem with order 1234", b"X-Autoreply: yes"),
])
def test_an_auto_reply_quoting_bounce_words_in_its_subject_is_no_bounce(subject: bytes, sign: bytes) -> None:
    # Auto-replies go to the envelope sender, our VERP address, and quote the subject they
    # answer: a shop's "Delivery status of your order" must not come back as a late bounce.
    envelope = "bounces+77777777-8888-4999-aaaa-bbbbccccdddd=heidi=corp.example@bounces.example"
    data = sample("out_of_office.eml").replace(b"Auto-Submitted: auto-replied\n", sign + b"\n")
    data = data.replace(b"Subject: Automatic reply: Your weekly deals", b"Subject: " + subject)
    report = parse_report(data, envelope, VERP)
    assert (report.kind, report.recipients) == ("auto_reply", ())


def test_a_bounce_whose_subject_starts_with_its_words_is_one_despite_auto_reply_signs() -> None:
    envelope = "bounces+1234abcd-0000-4000-8000-000000000001=kim=tiny-isp.example@bounces.example"
    data = sample("verp_useless.eml").replace(b"From: postmaster@", b"From: robot@")
    data = data.replace(b"Subject:", b"Auto-Submitted: auto-replied\nSubject:")
    assert parse_report(data, envelope, VERP).kind == "bounce"


def test_bounces_with_auto_submitted_are_still_bounces() -> None:
    assert read("postfix_dsn.eml").kind == "bounce"  # it says Auto-Submitted: auto-replied
    assert read("exim.eml").kind == "bounce"


def test_a_useless_bounce_to_a_verp_address_is_a_bounce_for_the_verp_recipient() -> None:
    envelope = "bounces+1234abcd-0000-4000-8000-000000000001=kim=tiny-isp.example@bounces.example"
    report = read("verp_useless.eml", envelope)
    [failure] = report.recipients
    assert (report.kind, report.reason) == ("bounce", "a bounce to a VERP address")
    assert (failure.recipient, failure.status, failure.diagnostic) == (
        "kim@tiny-isp.example", "5.1.1", "550 5.1.1 mailbox unavailable")
    assert report.mta_id == "1234abcd-0000-4000-8000-000000000001"
    assert read("verp_useless.eml").kind == "unknown"  # without the envelope, nothing says whose
    # Bounces carry the signs of auto-replies too: a mailer-daemon's mail is not one.
    marked = sample("verp_useless.eml").replace(b"Subject:", b"Auto-Submitted: auto-replied\nSubject:")
    assert parse_report(marked, envelope, VERP).kind == "bounce"


def test_a_useless_delay_warning_to_a_verp_address_is_a_delay() -> None:
    # A warning in words only (no DSN, no status code): the message is late, not bounced.
    envelope = "bounces+1234abcd-0000-4000-8000-000000000001=kim=tiny-isp.example@bounces.example"
    data = sample("verp_useless.eml").replace(b"Subject: Returned mail: see transcript for details",
                                              b"Subject: Delivery Status Notification (Delay)")
    data = data.replace(b"Your mail could not be delivered. Sorry.\nReason: 550 5.1.1 mailbox unavailable",
                        b"THIS IS A WARNING ONLY. Your message has not yet been delivered;\n"
                        b"the mail system will keep trying for 4 more days.\nReason: connection timed out")
    assert b"WARNING ONLY" in data
    report = parse_report(data, envelope, VERP)
    assert (report.kind, [r.action for r in report.recipients]) == ("delay", ["delayed"])


def test_a_bounce_forwarded_as_an_attachment_is_not_ours() -> None:
    dsn = sample("postfix_dsn.eml")
    data = (b"From: someone@example.org\nTo: fbl@bounces.example\nSubject: Fwd: look at this\n"
            b"Content-Type: multipart/mixed; boundary=fwd\n\n--fwd\nContent-Type: text/plain\n\nSee below.\n"
            b"--fwd\nContent-Type: message/rfc822\n\n" + dsn + b"\n--fwd--\n")
    report = parse_report(data)
    assert (report.kind, report.recipients) == ("unknown", ())


def test_junk_is_unknown_with_a_reason() -> None:
    text = read("junk_text.eml", "fbl@bounces.example")
    binary = read("junk_binary.bin")
    assert (text.kind, text.reason) == ("unknown", "neither a DSN, a feedback report nor a known bounce")
    assert binary.kind == "unknown" and binary.reason
    assert parse_report(b"") == Report(kind="unknown", reason="empty")
    assert parse_report(b"\r\n \r\n").kind == "unknown"


def test_bad_charsets_and_missing_headers_do_not_matter() -> None:
    data = sample("postfix_dsn.eml").replace(b"charset=utf-8", b"charset=x-no-such-charset")
    data = data.replace(b"Subject: Undelivered Mail Returned to Sender", b"Subject: =?bogus?Q?=FF=FE?= \xff\xfe")
    data = data.replace(b"Message-ID: <20261201143037.team@shop.example>\n", b"")
    report = parse_report(data)
    assert report.kind == "bounce" and len(report.recipients) == 2 and report.message_id is None


@pytest.mark.parametrize("body", [b"", b"caf\xe9 "])
def test_a_charset_name_python_refuses_is_read_as_utf_8(body: bytes) -> None:
    data = (b"From: MAILER-DAEMON@x.example\nContent-Type: text/plain; charset=\"utf\x008\"\n\n"
            b"Hi. This is the qmail-send program at x.\n\n<a@example.org>:\n" + body
            + b"Sorry, no mailbox here by that name. (#5.1.1)\n")
    assert [(r.recipient, r.hard) for r in parse_report(data).recipients] == [("a@example.org", True)]


def test_a_ten_megabyte_bounce_is_read_from_its_beginning() -> None:
    body = b"x" * 76 + b"\n"
    data = sample("gmail.eml").replace(b"Hello, your order 10042 has shipped.", body * 135_000)
    assert len(data) > 10_000_000
    report = parse_report(data)
    assert (report.kind, report.recipients[0].hard, report.message_id) == (
        "bounce", True, "<20261130161458.4f1c2d@shop.example>")


def test_deep_nesting_is_cut_and_never_raises() -> None:
    head = b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b0\n\n"
    nest = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(5000))
    report = parse_report(head + nest + b"text\n")
    # Read (cut at the 64th multipart), rather than given up on when the parser recursed too deep.
    assert (report.kind, report.reason) == ("unknown", "neither a DSN, a feedback report nor a known bounce")


def test_a_long_line_of_at_signs_is_read_in_one_pass() -> None:
    # A recipient pattern that could split "<a@a@a@..." at every "@" would take minutes here.
    data = b"From: x@y\n\nHi. This is the qmail-send program at x.\n\n<" + b"a@" * 120_000 + b"\n"
    assert parse_report(data) == Report(kind="unknown", reason="qmail bounce naming no recipient")


@pytest.mark.timeout(10)
def test_a_header_of_many_encoded_words_is_read_in_bounded_time() -> None:
    # The standard library decodes encoded words in quadratic time: a 2.8 MB Subject of
    # them took over two minutes of the reading thread before header values were bounded.
    data = b"From: a@example.org\nSubject: " + b"=?utf-8?q?Automatic_reply?= " * 200_000 + b"\n\nAway.\n"
    assert parse_report(data).kind == "auto_reply"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", [b"text/plain", b"multipart/mixed"])
def test_a_content_type_of_many_parameters_is_read_in_bounded_time(kind: bytes) -> None:
    # The standard library splits parameters in quadratic time: a charset or boundary
    # looked up behind 4 MB of them took minutes of the reading thread.
    data = (b"From: a@example.org\nSubject: Automatic reply\nContent-Type: " + kind + b"; "
            + b'a="";' * 800_000 + b" charset=utf-8; boundary=zz\n\nAway.\n")
    assert parse_report(data).kind == "auto_reply"


@pytest.mark.timeout(4)
def test_a_multipart_of_very_many_parts_is_read_in_bounded_time() -> None:
    # 800,000 empty parts in 4 MB: the parser builds each (8 s) though 200 are looked at.
    data = (b"From: a@example.org\nSubject: Automatic reply\nContent-Type: multipart/mixed; boundary=z\n\n"
            b"--z\nContent-Type: text/plain\n\nAway.\n" + b"--z\n\n" * 800_000 + b"--z--\n")
    report = parse_report(data)
    assert report.kind == "auto_reply"


def test_plain_text_is_scanned_only_so_far() -> None:
    intro = b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n\nHi. This is the qmail-send program at x.\n\n"
    near = intro + b"<a@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n"
    far = intro + b"filler\n" * (MAX_SCAN // 7) + b"\n<a@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n"
    assert parse_report(near).kind == "bounce"
    assert (parse_report(far).kind, parse_report(far).reason) == ("unknown", "qmail bounce naming no recipient")


def test_a_bounce_returned_inside_a_bounce_is_read_once() -> None:
    inner = sample("postfix_delay.eml")
    outer = sample("gmail.eml").replace(
        b"Content-Type: text/plain; charset=\"utf-8\"\n\nHello, your order 10042 has shipped.",
        inner[inner.index(b"MIME-Version"):])
    assert b"Action: delayed" in outer  # the inner report is there, as the returned message
    report = parse_report(outer)
    assert [r.recipient for r in report.recipients] == ["nobody.here@gmail.com"]


SAMPLE_BYTES = [sample(p.name) for p in sorted(SAMPLES.iterdir())]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_report(data, "x@bounces.example", VERP), Report)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLE_BYTES)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "drop"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.sampled_from([b"\n", b"\n\n", b"--", b";", b"=?", b"\x00", b"<", b"Action: failed\n",
                                                b"Content-Type: multipart/report; boundary=", b"\xff\xfe"]))
        else:
            del data[at:at + draw(st.integers(1, 200))]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from([None, "fbl@bounces.example", "bounces+a=b=c@bounces.example"]))
def test_mutated_samples_never_raise(data: bytes, envelope: str | None) -> None:
    report = parse_report(data, envelope, VERP)
    assert report.kind in ("bounce", "delay", "complaint", "auto_reply", "unknown")
    assert all(len(r.diagnostic.encode("utf-8")) <= DIAGNOSTIC_MAX for r in report.recipients)


def test_samples_cover_every_kind() -> None:
    kinds = {parse_report(data, None, VERP).kind for data in SAMPLE_BYTES}
    assert kinds == {"bounce", "delay", "complaint", "auto_reply", "unknown"}
