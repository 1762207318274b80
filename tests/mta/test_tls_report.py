"""TLS-RPT (RFC 8460 §4): sessions counted per day, domain and policy, the report
document, and the files a restart goes on counting from."""

import json

from mta.clock import Clock
from mta.tls.files import ReportFiles
from mta.tls.policy import Policy
from mta.tls.report import DayReports, result_type, sts_policy

POLICY = sts_policy("example.com", Policy("enforce", ("*.example.com",), 86400))


def test_a_day_report_has_the_rfc_8460_shape():
    day = DayReports("2026-12-03")
    day.count("example.com", POLICY, None, "mx1.example.com", "192.0.2.1")
    day.count("example.com", POLICY, None, "mx1.example.com", "192.0.2.1")
    day.count("example.com", POLICY, "certificate-expired", "mx2.example.com", "192.0.2.2")
    doc = day.document("example.com", "mta.sender.test")
    assert doc["date-range"] == {"start-datetime": "2026-12-03T00:00:00Z", "end-datetime": "2026-12-03T23:59:59Z"}
    assert doc["organization-name"] == "mta.sender.test" and doc["report-id"]
    [entry] = doc["policies"]
    assert entry["policy"] == {"policy-type": "sts", "policy-domain": "example.com", "mx-host": ["*.example.com"],
                               "policy-string": ["version: STSv1", "mode: enforce", "mx: *.example.com",
                                                 "max_age: 86400"]}
    assert entry["summary"] == {"total-successful-session-count": 2, "total-failure-session-count": 1}
    assert entry["failure-details"] == [{"result-type": "certificate-expired", "failed-session-count": 1,
                                         "receiving-mx-hostname": "mx2.example.com", "receiving-ip": "192.0.2.2"}]


def test_failure_texts_map_to_result_types():
    assert result_type("... but the server does not offer STARTTLS") == "starttls-not-supported"
    assert result_type("certificate verify failed: Hostname mismatch, certificate is not valid") == \
        "certificate-host-mismatch"
    assert result_type("certificate verify failed: certificate has expired") == "certificate-expired"
    assert result_type("certificate verify failed: self-signed certificate") == "certificate-not-trusted"
    assert result_type("something else") == "validation-failure"


def test_files_are_written_per_day_and_domain_and_a_restart_goes_on_counting(tmp_path):
    directory = str(tmp_path / "mta.yaml.tlsrpt")
    clock = Clock(lambda: 1_796_300_000.0)  # 2026-12-03 (UTC)
    files = ReportFiles(directory, "mta.sender.test", clock, sending_ip="198.51.100.7")
    files.count("example.com", POLICY, "certificate-expired", "mx1.example.com", "192.0.2.1")  # no loop: at once
    path = files.path("2026-12-03", "example.com")
    with open(path) as fh:
        [entry] = json.load(fh)["policies"]
    assert entry["summary"]["total-failure-session-count"] == 1
    assert entry["failure-details"][0]["sending-mta-ip"] == "198.51.100.7"  # smtp.bind, when set
    again = ReportFiles(directory, "mta.sender.test", clock)
    again.count("example.com", POLICY, None, "mx1.example.com", None)
    with open(path) as fh:
        summary = json.load(fh)["policies"][0]["summary"]
    assert summary == {"total-successful-session-count": 1, "total-failure-session-count": 1}


def test_attempts_are_counted_by_policy_and_outcome_and_testing_policies_reported(tmp_path):
    from mta.smtp.client import Reply
    from mta.tls.cache import Known
    from mta.tls.service import TlsPolicies, outcome_of

    assert outcome_of(Reply(250, "ok", "message", "TLSv1.3 X")) == "success"
    assert outcome_of(Reply(250, "ok", "message", "TLSv1.3 X", "certificate-host-mismatch")) == "failure"
    assert outcome_of(Reply(None, "... does not offer STARTTLS", "tls")) == "failure"
    assert outcome_of(Reply(250, "ok", "message")) == "plaintext"
    assert outcome_of(Reply(None, "refused", "connect")) == "no-session"

    testing = Policy("testing", ("mx1.example.com",), 86400)

    class Sts:
        unfetched = {"broken.test": "sts-policy-fetch-error"}

        def known(self, domain):
            return Known("1", testing, 2e9) if domain == "example.com" else None

    clock = Clock(lambda: 1_796_300_000.0)
    files = ReportFiles(str(tmp_path / "r"), "mta.sender.test", clock)
    tls = TlsPolicies(Sts(), 10.0, files)
    tls.attempted("example.com", "mta-sts-testing", Reply(250, "ok", "message", "TLSv1.3 X"), "mx1.example.com", "192.0.2.1")
    tls.attempted("example.com", "mta-sts-testing", Reply(250, "ok", "message", "TLSv1.3 X"), "mx9.other.test", "192.0.2.9")
    tls.attempted("other.test", "opportunistic", Reply(250, "ok", "message"), "mx.other.test", "192.0.2.3")
    tls.attempted("broken.test", "opportunistic", Reply(250, "ok", "message"), "mx.broken.test", "192.0.2.4")
    assert tls.counts == {("mta-sts-testing", "success"): 1, ("mta-sts-testing", "failure"): 1,
                          ("opportunistic", "plaintext"): 2}
    import os
    assert not os.path.exists(files.path("2026-12-03", "other.test"))  # publishes nothing: no report
    with open(files.path("2026-12-03", "broken.test")) as fh:  # publishes a policy that could not be had
        [broken] = json.load(fh)["policies"]
    assert broken["policy"]["policy-type"] == "sts" and broken["summary"]["total-failure-session-count"] == 1
    assert broken["failure-details"][0]["result-type"] == "sts-policy-fetch-error"
    with open(files.path("2026-12-03", "example.com")) as fh:
        [entry] = json.load(fh)["policies"]
    assert entry["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    assert entry["failure-details"][0]["result-type"] == "validation-failure"
    assert entry["failure-details"][0]["receiving-mx-hostname"] == "mx9.other.test"


def test_each_node_counts_in_files_of_its_own(tmp_path):
    clock = Clock(lambda: 1_796_300_000.0)
    one = ReportFiles(str(tmp_path), "mta.sender.test", clock, node="host-0")
    two = ReportFiles(str(tmp_path), "mta.sender.test", clock, node="host-1")
    one.count("example.com", POLICY, None, "mx1.example.com", None)
    two.count("example.com", POLICY, None, "mx1.example.com", None)
    assert one.path("2026-12-03", "example.com").endswith("2026-12-03_example.com.host-0.json")
    for files in (one, two):
        with open(files.path("2026-12-03", "example.com")) as fh:
            assert json.load(fh)["policies"][0]["summary"]["total-successful-session-count"] == 1


def test_rua_mailto_addresses_of_the_smtp_tls_record():
    from mta.tls.mailing import parse_rua

    assert parse_rua(["v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/x, mailto:b@example.net!10m"]) \
        == ["tls@example.com", "b@example.net"]
    assert parse_rua(["v=TLSRPTv1;rua=mailto:a@example.com", "v=TLSRPTv1;rua=mailto:b@example.com"]) == []
    assert parse_rua(["v=spf1 -all"]) == [] and parse_rua(["v=TLSRPTv1; rua=https://only.example/"]) == []


def test_the_report_message_is_rfc_8460_section_5_3():
    import email
    import gzip

    from mta.tls.mailing import report_message

    day = DayReports("2026-12-03")
    day.count("example.com", POLICY, "starttls-not-supported", "mx1.example.com", None)
    document = day.document("example.com", "mta.sender.test")
    text = report_message(document, "example.com", "tlsrpt@sender.test", "tls@example.com", 1_796_300_000.0)
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
    message = email.message_from_string(text)
    assert message.get_content_type() == "multipart/report" and message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == "example.com" and message["TLS-Report-Submitter"] == "mta.sender.test"
    assert message["Subject"].replace("\r\n", "").startswith("Report Domain: example.com Submitter: mta.sender.test Report-ID: <")
    [report] = [p for p in message.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert report.get_filename() == "mta.sender.test!example.com!1796256000!1796342399.json.gz"
    assert json.loads(gzip.decompress(report.get_payload(decode=True))) == document


def test_dane_sessions_are_reported_per_mx_host_with_its_records(tmp_path):
    from mta.smtp.client import Reply
    from mta.tls.dane import HostTlsa, Tlsa
    from mta.tls.service import TlsPolicies

    class NoSts:
        unfetched = {}

        def known(self, domain):
            return None

    class Dane:
        def known(self, domain):
            return {"mx1.example.com": HostTlsa((Tlsa(3, 1, 1, b"\1" * 32),))}

    files = ReportFiles(str(tmp_path), "mta.sender.test", Clock(lambda: 1_796_300_000.0))
    tls = TlsPolicies(NoSts(), 10.0, files, Dane())
    tls.attempted("example.com", "dane", Reply(250, "ok", "message", "TLSv1.3 X"), "mx1.example.com", "192.0.2.1")
    tls.attempted("example.com", "dane", Reply(None, "DANE: the certificate of mx1.example.com matches none of its "
                                                     "TLSA records (...)", "tls"), "mx1.example.com", "192.0.2.1")
    tls.attempted("example.com", "dane", Reply(250, "ok", "message", "TLSv1.3 X"), "mx2.example.com", "192.0.2.2")
    with open(files.path("2026-12-03", "example.com")) as fh:
        [entry] = json.load(fh)["policies"]  # mx2 has no TLSA records: opportunistic, not reported
    assert entry["policy"] == {"policy-type": "tlsa", "policy-domain": "example.com", "mx-host": ["mx1.example.com"],
                               "policy-string": ["3 1 1 " + "01" * 32]}
    assert entry["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    assert entry["failure-details"][0]["result-type"] == "tlsa-invalid"


def test_counts_waiting_for_their_timer_are_written_when_the_process_ends(tmp_path):
    import asyncio

    files = ReportFiles(str(tmp_path), "mta.sender.test", Clock(lambda: 1_796_300_000.0))

    async def main():
        files.count("example.com", POLICY, None, "mx1.example.com", None)  # the write waits for its timer

    asyncio.run(main())
    path = files.path("2026-12-03", "example.com")
    import os
    assert not os.path.exists(path)
    files.flush()  # what atexit does
    with open(path) as fh:
        assert json.load(fh)["policies"][0]["summary"]["total-successful-session-count"] == 1
