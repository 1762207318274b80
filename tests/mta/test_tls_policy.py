"""MTA-STS as values (RFC 8461): the TXT record, the policy file, MX matching, and which
TLS a domain's mail gets from the rules' mode and the policy in force."""

import pytest

from mta.config import DEFAULT_POLICY, merge, Policy as Limits
from mta.routing.mx import DnsFailure, MxAnswer, MxHost
from mta.routing.rules import Resolved
from mta.tls.apply import concrete, described, in_force
from mta.tls.dane import HostTlsa, Tlsa
from mta.tls.policy import Policy, PolicyError, mx_matches, parse_policy, parse_txt


def test_txt_record_gives_its_id():
    assert parse_txt(["v=STSv1; id=20240101T000000;"]) == "20240101T000000"
    assert parse_txt(["v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["v=spf1 -all"]) is None  # §3.1: records not starting with v=STSv1 are ignored
    assert parse_txt([]) is None


@pytest.mark.parametrize("records", [
    ["v=STSv1; id=a;", "v=STSv1; id=b;"],  # §3.1: several STS records: no policy
    ["v=STSv1;"],  # no id
    ["v=STSv1; id=has-dash;"],  # id is letters and digits only
    ["v=STSv1; id=" + "a" * 33],  # at most 32
])
def test_invalid_txt_records_are_refused(records):
    with pytest.raises(PolicyError):
        parse_txt(records)


POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"


def test_policy_file_parses_with_crlf_or_lf_and_ignores_unknown_keys():
    policy = parse_policy(POLICY)
    assert policy == Policy("enforce", ("mail.example.com", "*.example.net"), 604800)
    assert parse_policy(POLICY.replace("\r\n", "\n") + "extension: yes\n") == policy


@pytest.mark.parametrize("text", [
    POLICY.replace("STSv1", "STSv2"),
    POLICY.replace("enforce", "strict"),
    POLICY.replace("604800", "31557601"),  # over the RFC's maximum
    POLICY.replace("604800", "-1"),
    "version: STSv1\nmode: enforce\nmax_age: 86400\n",  # enforce without mx
    POLICY.replace("mail.example.com", "mail.*.com"),
    "not a policy",
])
def test_invalid_policies_are_refused(text):
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_mode_none_needs_no_mx():
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mode == "none"


def test_mx_patterns_match_as_section_4_1_says():
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert not mx_matches("mail.example.com", "mail2.example.com")
    assert mx_matches("*.example.net", "mx1.example.net")
    assert not mx_matches("*.example.net", "example.net")  # the wildcard is one label, not none
    assert not mx_matches("*.example.net", "a.b.example.net")  # nor two
    assert not mx_matches("*.example.net", "mx1.example.network")


ANSWER = MxAnswer((MxHost("mx1.example.net", 10, ("192.0.2.1",)), MxHost("backup.other.test", 20, ("192.0.2.2",))))


def _resolved(tls: str) -> Resolved:
    return Resolved("mx:x", merge(DEFAULT_POLICY, Limits(tls=tls)), ("default",))


def test_enforce_keeps_only_matching_hosts_and_verifies_under_its_own_key():
    resolved, answer = concrete(_resolved("dane"), ANSWER, "example.net", parse_policy(POLICY))
    assert resolved.policy.tls == "mta-sts-enforce"
    assert [h.name for h in answer.hosts] == ["mx1.example.net"]
    assert resolved.key != "mx:x" and resolved.key.startswith("mx:x ")


def test_enforce_without_a_matching_host_defers_in_the_tls_phase():
    policy = parse_policy(POLICY.replace("*.example.net", "*.elsewhere.test"))
    failure = concrete(_resolved("mta-sts"), ANSWER, "example.net", policy)
    assert isinstance(failure, DnsFailure) and not failure.permanent and failure.phase == "tls"
    assert "MTA-STS policy of example.net (enforce)" in failure.description


def test_testing_delivers_to_every_host_and_no_policy_is_opportunistic():
    resolved, answer = concrete(_resolved("dane"), ANSWER, "example.net", parse_policy(POLICY.replace("enforce", "testing")))
    assert resolved.policy.tls == "mta-sts-testing" and answer is ANSWER
    resolved, answer = concrete(_resolved("dane"), ANSWER, "example.net", None)
    assert resolved.policy.tls == "opportunistic" and resolved.key == "mx:x" and answer is ANSWER


def test_the_operators_modes_ignore_published_policies():
    for mode in ("opportunistic", "required", "verified", "disabled"):
        resolved, answer = concrete(_resolved(mode), ANSWER, "example.net", parse_policy(POLICY))
        assert resolved.policy.tls == mode and answer is ANSWER
        assert "not consulted" in described(mode, parse_policy(POLICY))


def test_dane_beats_mta_sts_only_in_mode_dane_and_each_host_carries_its_records():
    sts = parse_policy(POLICY)
    state = HostTlsa((Tlsa(3, 1, 1, b"\1" * 32),))
    resolved, answer = concrete(_resolved("dane"), ANSWER, "example.net", sts, {"mx1.example.net": state})
    assert resolved.policy.tls == "dane" and resolved.key == "mx:x dane"
    assert [h.tlsa for h in answer.hosts] == [state, None]  # the other host: opportunistic
    assert [h.name for h in answer.hosts] == ["mx1.example.net", "backup.other.test"]
    resolved, _ = concrete(_resolved("mta-sts"), ANSWER, "example.net", sts, {"mx1.example.net": state})
    assert resolved.policy.tls == "mta-sts-enforce"
    resolved, _ = concrete(_resolved("dane"), ANSWER, "example.net", sts, {})  # MX insecure: no DANE
    assert resolved.policy.tls == "mta-sts-enforce"


def test_results_name_the_policy_in_force():
    assert in_force(_resolved("dane")) == "opportunistic"  # nothing made it concrete: a smarthost, given hosts
    assert in_force(_resolved("mta-sts")) == "opportunistic"
    resolved, _ = concrete(_resolved("dane"), ANSWER, "example.net", parse_policy(POLICY))
    assert in_force(resolved) == "mta-sts-enforce"
    resolved, _ = concrete(_resolved("dane"), ANSWER, "example.net", None, {"mx1.example.net": HostTlsa()})
    assert in_force(resolved) == "dane"
    assert in_force(_resolved("verified")) == "verified"


def test_an_operators_pause_names_the_key_a_tls_policys_destination_comes_from():
    from mta.tls.apply import base_key

    for resolved in (concrete(_resolved("dane"), ANSWER, "example.net", parse_policy(POLICY))[0],
                     concrete(_resolved("dane"), ANSWER, "example.net", parse_policy(POLICY.replace("enforce", "testing")))[0],
                     concrete(_resolved("dane"), ANSWER, "example.net", None, {"mx1.example.net": HostTlsa()})[0]):
        assert resolved.key != "mx:x" and base_key(resolved.key) == "mx:x"
    assert base_key("provider:google") == "provider:google"


def test_mta_status_finds_a_tls_policys_destination_by_the_key_it_comes_from():
    from types import SimpleNamespace

    from mta.ops.detail import matches

    d = SimpleNamespace(key="mx:mx.good.test mta-sts[mx.good.test]", domain="good.test")
    assert all(matches(d, target) for target in ("mx:mx.good.test", "mx.good.test", "good.test", d.key))
    assert not matches(d, "mx:other.test")
