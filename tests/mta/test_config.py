"""The YAML rules file (SPEC §3, RELIABILITY 12): the contract's example loads, an empty
file gives the documented defaults, and a bad file is refused with every problem and its
key path listed at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.config import (
    DEFAULT_POLICY,
    Config,
    ConfigError,
    Policy,
    load_config,
    merge,
    parse_config,
)
from shaper.units import Rate

REPO = Path(__file__).resolve().parents[2]
SPEC_EXAMPLE = REPO / "config" / "spec-example.yaml"


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


# --------------------------------------------------------------------------- the SPEC example


@pytest.fixture(scope="module")
def spec_config() -> Config:
    return load_config(SPEC_EXAMPLE)


def test_spec_example_is_the_one_in_the_spec() -> None:
    """config/spec-example.yaml is SPEC §3's block verbatim (bar the leading comment)."""
    spec = (Path("/work/shared/SPEC.md"))
    if not spec.exists():
        pytest.skip("SPEC.md not available")
    block = spec.read_text(encoding="utf-8").split("```yaml\n", 1)[1].split("```", 1)[0]
    ours = "".join(line for line in SPEC_EXAMPLE.read_text(encoding="utf-8").splitlines(True) if not line.startswith("#"))
    assert ours.strip() == block.strip()


def test_spec_example_sections(spec_config: Config) -> None:
    c = spec_config
    assert c.broker.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert c.dns.nameservers == ("127.0.0.1",)
    assert c.dns.port == 53
    assert c.smtp.port == 25
    assert c.smtp.helo == "mta.example.net"
    assert c.smtp.bind is None
    assert c.metrics.port == 9108


def test_spec_example_default_policy(spec_config: Config) -> None:
    d = spec_config.default
    assert d.connection_limit == 10
    assert d.max_message_rate == Rate(100, 1)
    assert d.max_connection_rate == Rate(100, 60)
    assert d.max_deliveries_per_connection == 100
    assert d.idle_timeout == 60.0
    assert d.retry_intervals == (600.0, 600.0, 1800.0, 1800.0, 3600.0, 3600.0, 7200.0)
    assert d.max_age == 86400.0
    assert d.tls == "opportunistic"
    # not in the file: still the built-in defaults
    assert d.connect_timeout == DEFAULT_POLICY.connect_timeout
    assert d.data_dot_timeout == DEFAULT_POLICY.data_dot_timeout


def test_spec_example_providers(spec_config: Config) -> None:
    (bigmail,) = spec_config.providers
    assert bigmail.name == "bigmail"
    assert bigmail.mx_suffix == (".bigmail.example",)
    assert bigmail.policy.connection_limit == 5
    assert bigmail.policy.max_deliveries_per_connection == 50
    # a provider holds only what it sets; the rest is inherited later
    assert bigmail.policy.max_message_rate is None
    assert bigmail.policy.retry_intervals is None


def test_spec_example_domains(spec_config: Config) -> None:
    domains = {d.name: d for d in spec_config.domains}
    assert set(domains) == {"slow.example", "static.example"}
    slow = domains["slow.example"]
    assert slow.policy.connection_limit == 2
    assert slow.policy.max_message_rate == Rate(20, 60)
    assert slow.mx is None
    static = domains["static.example"]
    assert static.mx == ("[127.0.0.1]:2525",)
    assert static.policy == Policy()


def test_spec_example_patterns(spec_config: Config) -> None:
    first, second = spec_config.patterns
    assert first.match == "TSS04"
    assert first.action == "suspend"
    assert first.duration == 7200.0
    assert first.code is None and first.enhanced is None
    assert second.code == 421
    assert second.match == "(?i)rate limit|too many"
    assert second.action == "throttle"
    assert second.duration == 5400.0
    assert second.policy.max_message_rate == Rate(1, 60)
    assert second.policy.connection_limit == 1
    assert second.policy.max_age is None


def test_spec_example_routes_and_dkim(spec_config: Config) -> None:
    (route,) = spec_config.routes
    assert route.sender_domain == "customer.example"
    assert route.smarthost == "[smtp.customer.example]:587"
    assert route.username == "mailer@customer.example"
    assert route.password_env == "CUSTOMER_SMTP_PASSWORD"
    assert route.password_file is None
    assert route.policy.tls == "required"
    assert route.policy.max_message_rate == Rate(6000, 3600)
    (key,) = spec_config.dkim
    assert key.domain == "sender.example"
    assert key.selector == "s2026"
    assert key.key_file == "/etc/mta/dkim/sender.example.pem"
    assert key.algorithm == "rsa-sha256"


def test_spec_example_is_frozen(spec_config: Config) -> None:
    with pytest.raises(AttributeError):
        spec_config.default.connection_limit = 99  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec_config.broker = None  # type: ignore[misc]
    assert isinstance(spec_config.domains, tuple)


def test_shipped_example_loads() -> None:
    load_config(REPO / "config" / "example.yaml")


@pytest.mark.parametrize("value, expected", [("", ""), ("auto", "auto"), ("state/outcomes", "state/outcomes")])
def test_journal_takes_off_auto_or_a_path(tmp_path: Path, value: str, expected: str) -> None:
    text = f"broker:\n  journal: {value!r}\n"
    assert load_config(write(tmp_path, text)).broker.journal == expected


def test_journal_is_a_string(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "broker:\n  journal: 5\n"))
    assert "broker.journal" in str(err.value)


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "default:\n", "default: {}\ndomains: {}\npatterns: []\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    c = load_config(write(tmp_path, text))
    assert c == Config()
    d = c.default
    assert d is DEFAULT_POLICY or d == DEFAULT_POLICY
    assert d.retry_intervals == (600.0, 600.0, 1800.0, 1800.0, 3600.0, 3600.0, 7200.0)  # MailerQ's
    assert d.max_age == 24 * 3600.0
    assert d.connection_limit == 10
    assert d.max_message_rate == Rate.parse("100/s")
    assert d.max_connection_rate == Rate.parse("100/min")
    assert d.max_deliveries_per_connection == 100
    assert d.idle_timeout == 60.0
    assert d.tls == "dane"  # published DANE and MTA-STS policies honoured, else opportunistic
    assert all(getattr(d, f) is not None for f in Policy.__struct_fields__), "the default policy sets every field"
    assert c.broker.url == "amqp://guest:guest@localhost:5672/"
    assert c.broker.queue_type == "quorum"
    assert c.dns.nameservers is None  # the system resolver
    assert c.dns.port == 53
    assert c.smtp.port == 25
    assert c.smtp.bind is None
    assert c.metrics.port == 9108
    assert (c.providers, c.domains, c.patterns, c.routes, c.dkim) == ((), (), (), (), ())


def test_parse_config_none_is_defaults() -> None:
    assert parse_config(None) == Config()
    assert parse_config({}) == Config()


# --------------------------------------------------------------------------- values come through


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        ({"default": {"idle_timeout": "90s"}}, lambda c: c.default.idle_timeout == 90.0),
        ({"default": {"idle_timeout": 0}}, lambda c: c.default.idle_timeout == 0.0),
        ({"default": {"max_age": 3600}}, lambda c: c.default.max_age == 3600.0),  # YAML number = seconds
        ({"default": {"max_age": "2d"}}, lambda c: c.default.max_age == 172800.0),
        ({"default": {"retry_intervals": ["1m", 300, "1.5h"]}}, lambda c: c.default.retry_intervals == (60.0, 300.0, 5400.0)),
        ({"default": {"max_message_rate": "5/h"}}, lambda c: c.default.max_message_rate == Rate(5, 3600)),
        ({"default": {"max_message_rate": "10/d"}}, lambda c: c.default.max_message_rate == Rate(10, 86400)),
        ({"default": {"tls": "verified"}}, lambda c: c.default.tls == "verified"),
        ({"broker": {"queue_type": "classic"}}, lambda c: c.broker.queue_type == "classic"),
        ({"dns": {"nameservers": "10.0.0.1"}}, lambda c: c.dns.nameservers == ("10.0.0.1",)),
        ({"dns": {"nameservers": None}}, lambda c: c.dns.nameservers is None),
        ({"metrics": {"port": 0}}, lambda c: c.metrics.port == 0),  # 0 disables
        ({"smtp": {"bind": "192.0.2.1", "port": 2525}}, lambda c: (c.smtp.bind, c.smtp.port) == ("192.0.2.1", 2525)),
        ({"domains": {"Mixed.Example.": {"connection_limit": 3}}}, lambda c: c.domains[0].name == "mixed.example"),
        ({"domains": {"*.wild.example": {"connection_limit": 3}}}, lambda c: c.domains[0].name == "*.wild.example"),
        ({"domains": {"a.example": None}}, lambda c: c.domains[0].policy == Policy()),
        ({"domains": {"a.example": {"mx": "mx.a.example:2525"}}}, lambda c: c.domains[0].mx == ("mx.a.example:2525",)),
        ({"domains": {"a.example": {"mx": ["[::1]:25", "mx1.a.example"]}}}, lambda c: c.domains[0].mx == ("[::1]:25", "mx1.a.example")),
        ({"providers": {"g": {"mx_suffix": [".Google.COM"]}}}, lambda c: c.providers[0].mx_suffix == (".google.com",)),
        ({"providers": {"g": {"mx_suffix": ".google.com"}}}, lambda c: c.providers[0].mx_suffix == (".google.com",)),
        ({"patterns": [{"enhanced": "5.7.1", "action": "bounce"}]}, lambda c: c.patterns[0].enhanced == "5.7.1" and c.patterns[0].match is None),
        ({"patterns": [{"code": 450, "action": "retry"}]}, lambda c: c.patterns[0].code == 450),
        ({"routes": [{"sender_domain": "Cust.Example", "smarthost": "smtp.cust.example", "password_file": "/run/secret", "tags": "vip"}]},
         lambda c: (c.routes[0].sender_domain, c.routes[0].password_file, c.routes[0].tags) == ("cust.example", "/run/secret", ("vip",))),
        ({"routes": [{"sender_domain": "c.example", "smarthost": "[smtp.c.example]:587", "retry_intervals": ["5m"], "max_age": "2h"}]},
         lambda c: (c.routes[0].policy.retry_intervals, c.routes[0].policy.max_age) == ((300.0,), 7200.0)),
        ({"dkim": [{"domain": "s.example", "selector": "k", "key_file": "/k.pem", "algorithm": "ed25519-sha256"}]},
         lambda c: c.dkim[0].algorithm == "ed25519-sha256"),
    ],
)
def test_values_come_through(raw, check) -> None:
    assert check(parse_config(raw))


# Domain names in the rules are compared with what intake makes of an address: lower case,
# no trailing dot, IDNA 2008 A-labels (UTS #46, non-transitional: faß.de is xn--fa-hia.de,
# not IDNA 2003's fass.de). A `*.` or `.` prefix is kept.
IDN_NAMES = [
    ({"domains": {"faß.de": {}}}, lambda c: c.domains[0].name, "xn--fa-hia.de"),
    ({"domains": {"FAß.DE.": {}}}, lambda c: c.domains[0].name, "xn--fa-hia.de"),
    ({"domains": {"faß。de": {}}}, lambda c: c.domains[0].name, "xn--fa-hia.de"),  # ideographic full stop
    ({"domains": {"xn--fa-hia.de": {}}}, lambda c: c.domains[0].name, "xn--fa-hia.de"),
    ({"domains": {"*.faß.de": {}}}, lambda c: c.domains[0].name, "*.xn--fa-hia.de"),
    ({"providers": {"p": {"mx_suffix": [".Bücher.example", "mx.bücher.example"]}}},
     lambda c: c.providers[0].mx_suffix, (".xn--bcher-kva.example", "mx.xn--bcher-kva.example")),
    ({"routes": [{"sender_domain": "Faß.de", "smarthost": "s.example"}]},
     lambda c: (c.routes[0].sender_domain, c.routes[0].name), ("xn--fa-hia.de", "xn--fa-hia.de")),
    ({"routes": [{"sender_domain": "*.faß.de", "smarthost": "s.example", "name": "fass"}]},
     lambda c: c.routes[0].sender_domain, "*.xn--fa-hia.de"),
    ({"dkim": [{"domain": "faß.de.", "selector": "k", "key_file": "/k.pem"}]},
     lambda c: c.dkim[0].domain, "xn--fa-hia.de"),
]


@pytest.mark.parametrize(("raw", "get", "expected"), IDN_NAMES, ids=[str(r) for r, _, _ in IDN_NAMES])
def test_domain_names_in_the_rules_are_in_the_form_intake_gives(raw, get, expected) -> None:
    assert get(parse_config(raw)) == expected


JOINED = "a\u200db.example"  # a zero-width joiner outside the context IDNA 2008 allows it in
IDN_PROBLEMS = [
    ({"domains": {"☃.example": {}}}, "domains.☃.example", "not a valid domain name"),
    ({"domains": {"*.-faß.de": {}}}, "domains.*.-faß.de", "not a valid domain name"),
    ({"domains": {"faß.de": {}, "xn--fa-hia.de": {}}}, "domains.xn--fa-hia.de", "the same domain as domains.faß.de"),
    ({"providers": {"p": {"mx_suffix": [".p.example", JOINED]}}}, "providers.p.mx_suffix",
     f"[1] {JOINED!r} is not a valid domain name"),
    ({"routes": [{"sender_domain": "fa ß.de", "smarthost": "s.example"}]}, "routes[0].sender_domain",
     "not a valid domain name"),
    ({"dkim": [{"domain": "☃.example", "selector": "k", "key_file": "/k.pem"}]}, "dkim[0].domain",
     "not a valid domain name"),
]


@pytest.mark.parametrize(("raw", "path", "fragment"), IDN_PROBLEMS, ids=[p for _, p, _ in IDN_PROBLEMS])
def test_an_invalid_international_name_in_the_rules_is_an_error_with_its_path(raw, path, fragment) -> None:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    assert fragment in problems[0], problems


# --------------------------------------------------------------------------- merge


def test_merge_domain_overrides_only_what_it_sets(spec_config: Config) -> None:
    slow = next(d for d in spec_config.domains if d.name == "slow.example")
    merged = merge(spec_config.default, slow.policy)
    assert merged.connection_limit == 2
    assert merged.max_message_rate == Rate(20, 60)
    for field in Policy.__struct_fields__:
        if field not in ("connection_limit", "max_message_rate"):
            assert getattr(merged, field) == getattr(spec_config.default, field), field


def test_merge_chain_default_provider_domain() -> None:
    c = parse_config({
        "default": {"connection_limit": 8, "max_age": "12h"},
        "providers": {"p": {"mx_suffix": ".p.example", "connection_limit": 4, "idle_timeout": "5s"}},
        "domains": {"d.example": {"connection_limit": 1}},
    })
    merged = merge(merge(c.default, c.providers[0].policy), c.domains[0].policy)
    assert merged.connection_limit == 1  # domain
    assert merged.idle_timeout == 5.0  # provider
    assert merged.max_age == 43200.0  # default from the file
    assert merged.retry_intervals == DEFAULT_POLICY.retry_intervals  # built-in default


def test_merge_empty_override_returns_base() -> None:
    assert merge(DEFAULT_POLICY, Policy()) is DEFAULT_POLICY


def test_merge_none_never_clears_and_inputs_unchanged() -> None:
    override = Policy(connection_limit=3)
    merged = merge(DEFAULT_POLICY, override)
    assert merged.tls == "dane"
    assert DEFAULT_POLICY.connection_limit == 10
    assert override == Policy(connection_limit=3)
    assert merge(Policy(), override) == override


def test_default_section_merges_onto_builtin_defaults() -> None:
    c = parse_config({"default": {"connection_limit": 3}})
    assert c.default == msgspec.structs.replace(DEFAULT_POLICY, connection_limit=3)


# --------------------------------------------------------------------------- problems: all at once

BAD_FILE = """\
bogus_top: 1
broker:
  url: amqp://guest:guest@localhost:5672/
  prefech: 10
smtp:
  port: 0
default:
  connection_limit: -1
  max_message_rate: 20/our
  max_age: 3 fortnights
  idle_timeout: soon
  retry_intervals: [10m, 0s, later]
  tls: maybe
providers:
  bigmail:
    mx_sufix: [".bigmail.example"]
    max_deliveries_per_connection: -5
domains:
  slow.example:
    max_message_rate: 20/our
    colour: blue
  static.example:
    mx: ["[127.0.0.1]:99999"]
patterns:
  - match: "(unclosed"
    action: suspend
    duration: 2h
  - match: "x"
    action: throttle
    connection_limit: 1
  - match: y
    action: explode
  - action: bounce
  - match: z
    action: suspend
    duration: soon
    code: 700
    enhanced: "4.7"
routes:
  - smarthost: "[smtp.x.example]:587"
    password: hunter2-secret
  - sender_domain: a.example
    smarthost: "smtp.a.example:notaport"
    password_env: A
    password_file: /a
dkim:
  - domain: d.example
    selector: s
    algorithm: rsa-md5
"""

# (key path, a fragment of its message): one per fault planted above, nothing else.
BAD_FILE_PROBLEMS = [
    ("bogus_top", "unknown key"),
    ("broker.prefech", "unknown key"),
    ("smtp.port", "out of range"),
    ("default.connection_limit", "out of range"),
    ("default.max_message_rate", "unknown period 'our'"),
    ("default.max_age", "unknown unit"),
    ("default.idle_timeout", "invalid duration 'soon'"),
    ("default.retry_intervals", "[1]"),
    ("default.tls", "expected one of"),
    ("providers.bigmail.mx_sufix", "unknown key"),
    ("providers.bigmail.max_deliveries_per_connection", "out of range"),
    ("providers.bigmail.mx_suffix", "required"),
    ("domains.slow.example.max_message_rate", "unknown period 'our'"),
    ("domains.slow.example.colour", "unknown key"),
    ("domains.static.example.mx", "invalid mx"),
    ("patterns[0].match", "invalid regular expression"),
    ("patterns[1].duration", "required for action throttle"),
    ("patterns[2].action", "expected one of"),
    ("patterns[3]", "needs at least one of match, code, enhanced"),
    ("patterns[4].duration", "invalid duration 'soon'"),
    ("patterns[4].code", "out of range"),
    ("patterns[4].enhanced", "invalid enhanced status code"),
    ("routes[0].sender_domain", "required"),
    ("routes[0].password", "password_env or password_file"),
    ("routes[1].smarthost", "invalid smarthost"),
    ("routes[1]", "not both"),
    ("dkim[0].algorithm", "expected one of"),
    ("dkim[0].key_file", "required"),
]


def test_bad_file_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BAD_FILE))
    problems = info.value.problems
    remaining = list(problems)
    for path, fragment in BAD_FILE_PROBLEMS:
        hit = [p for p in remaining if p.startswith(f"{path}: ") and fragment in p]
        assert hit, f"no problem for {path} ({fragment!r}) in:\n" + "\n".join(problems)
        remaining.remove(hit[0])
    assert remaining == [], "unexpected extra problems:\n" + "\n".join(remaining)
    assert str(info.value) == "\n".join(problems)


def test_bad_file_never_echoes_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BAD_FILE))
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value.problems)


def test_unknown_password_key_is_reported_once_with_hint() -> None:
    problems = problems_of({"routes": [{"sender_domain": "a.example", "smarthost": "s.example", "password": "x"}]})
    assert problems == ["routes[0].password: passwords are not written in the rules file: use password_env or password_file"]


# (raw document, expected key path, fragment of the message): one fault each.
SINGLE_PROBLEMS = [
    ({"defaults": {}}, "defaults", "unknown key"),
    ({"default": {"connection_limt": 3}}, "default.connection_limt", "unknown key"),
    ({"default": {"max_message_rate": "20/our"}}, "default.max_message_rate", "unknown period 'our'"),
    ({"default": {"max_message_rate": 20}}, "default.max_message_rate", "N/s"),
    ({"default": {"max_message_rate": "0/s"}}, "default.max_message_rate", "positive"),
    ({"default": {"max_message_rate": "many/s"}}, "default.max_message_rate", "not a number"),
    ({"default": {"max_connection_rate": "100"}}, "default.max_connection_rate", "N/period"),
    ({"default": {"max_age": "10 parsecs"}}, "default.max_age", "unknown unit"),
    ({"default": {"max_age": "0s"}}, "default.max_age", "above zero"),
    ({"default": {"max_age": "-1h"}}, "default.max_age", "negative"),
    ({"default": {"max_age": True}}, "default.max_age", "invalid duration"),
    ({"default": {"idle_timeout": "-5s"}}, "default.idle_timeout", "negative"),
    ({"default": {"idle_timeout": 10**400}}, "default.idle_timeout", "too large"),
    ({"default": {"data_timeout": 0}}, "default.data_timeout", "above zero"),
    ({"default": {"retry_intervals": []}}, "default.retry_intervals", "non-empty list"),
    ({"default": {"retry_intervals": "10m"}}, "default.retry_intervals", "non-empty list"),
    ({"default": {"retry_intervals": ["10m", "-1m"]}}, "default.retry_intervals", "[1]"),
    ({"default": {"connection_limit": -1}}, "default.connection_limit", "out of range"),
    ({"default": {"connection_limit": 0}}, "default.connection_limit", "out of range"),
    ({"default": {"connection_limit": 2.5}}, "default.connection_limit", "whole number"),
    ({"default": {"connection_limit": True}}, "default.connection_limit", "whole number"),
    ({"default": {"connection_limit": "10"}}, "default.connection_limit", "whole number"),
    ({"default": {"max_deliveries_per_connection": -1}}, "default.max_deliveries_per_connection", "out of range"),
    ({"default": {"tls": "always"}}, "default.tls", "expected one of"),
    ({"default": []}, "default", "expected a mapping"),
    ({"broker": {"queue_type": "stream"}}, "broker.queue_type", "expected one of"),
    ({"broker": {"prefetch": 0}}, "broker.prefetch", "out of range"),
    ({"broker": {"prefetch_bytes": -1}}, "broker.prefetch_bytes", "out of range"),
    ({"broker": {"prefetch_bytes": "64MiB"}}, "broker.prefetch_bytes", "whole number"),
    ({"broker": {"url": ""}}, "broker.url", "non-empty string"),
    ({"broker": "amqp://x"}, "broker", "expected a mapping"),
    ({"dns": {"port": 70000}}, "dns.port", "out of range"),
    ({"dns": {"nameservers": []}}, "dns.nameservers", "non-empty list"),
    ({"dns": {"timeout": "0s"}}, "dns.timeout", "above zero"),
    ({"smtp": {"helo": ""}}, "smtp.helo", "non-empty string"),
    ({"smtp": {"max_message_size": -1}}, "smtp.max_message_size", "out of range"),
    ({"metrics": {"port": -1}}, "metrics.port", "out of range"),
    ({"providers": {"p": {"mx_suffix": [".p.example"], "colour": 1}}}, "providers.p.colour", "unknown key"),
    ({"providers": {"p": {"connection_limit": 2}}}, "providers.p.mx_suffix", "required"),
    ({"providers": {"p": {"mx_suffix": []}}}, "providers.p.mx_suffix", "non-empty list"),
    ({"providers": {"p": {"mx_suffix": [""]}}}, "providers.p.mx_suffix", "non-empty string"),
    ({"providers": ["p"]}, "providers", "expected a mapping"),
    ({"providers": {"p": "x"}}, "providers.p", "expected a mapping"),
    ({"domains": {"d.example": {"mx": ["mx.d.example:0"]}}}, "domains.d.example.mx", "invalid mx"),
    ({"domains": {"d.example": {"mx": ["mx .d.example"]}}}, "domains.d.example.mx", "invalid mx"),
    ({"domains": {"d.example": {"mx": ["[127.0.0.1]:2525x"]}}}, "domains.d.example.mx", "invalid mx"),
    ({"domains": {"d.example": {"max_age": "forever"}}}, "domains.d.example.max_age", "invalid duration"),
    ({"domains": ["d.example"]}, "domains", "expected a mapping"),
    ({"patterns": {"match": "x"}}, "patterns", "expected a list"),
    ({"patterns": [{"match": "[a-", "action": "bounce"}]}, "patterns[0].match", "invalid regular expression"),
    ({"patterns": [{"match": "(?P<x", "action": "bounce"}]}, "patterns[0].match", "invalid regular expression"),
    ({"patterns": [{"match": "a{4294967296}", "action": "bounce"}]}, "patterns[0].match", "invalid regular expression"),
    ({"patterns": [{"match": "x"}]}, "patterns[0].action", "required"),
    ({"patterns": [{"match": "x", "action": "throttle", "connection_limit": 1}]}, "patterns[0].duration", "required for action throttle"),
    ({"patterns": [{"match": "x", "action": "suspend"}]}, "patterns[0].duration", "required for action suspend"),
    ({"patterns": [{"match": "x", "action": "suspend", "duration": "0s"}]}, "patterns[0].duration", "above zero"),
    ({"patterns": [{"match": "x", "action": "bounce", "when": "now"}]}, "patterns[0].when", "unknown key"),
    ({"patterns": [{"code": 99, "action": "bounce"}]}, "patterns[0].code", "out of range"),
    ({"patterns": [{"code": "421", "action": "bounce"}]}, "patterns[0].code", "whole number"),
    ({"patterns": [{"enhanced": "6.0.0", "action": "bounce"}]}, "patterns[0].enhanced", "invalid enhanced"),
    ({"patterns": [{"action": "bounce"}]}, "patterns[0]", "needs at least one of"),
    ({"patterns": ["x"]}, "patterns[0]", "expected a mapping"),
    ({"routes": [{"smarthost": "s.example"}]}, "routes[0].sender_domain", "required"),
    ({"routes": [{"sender_domain": "a.example"}]}, "routes[0].smarthost", "required"),
    ({"routes": [{"sender_domain": "a.example", "smarthost": "[s.example]:70000"}]}, "routes[0].smarthost", "invalid smarthost"),
    ({"routes": [{"sender_domain": "a.example", "smarthost": "s.example", "tls": "sometimes"}]}, "routes[0].tls", "expected one of"),
    ({"routes": [{"sender_domain": "a.example", "smarthost": "s.example", "password_env": ""}]}, "routes[0].password_env", "non-empty string"),
    ({"routes": [{"sender_domain": "a.example", "smarthost": "s.example", "user": "u"}]}, "routes[0].user", "unknown key"),
    ({"dkim": [{"domain": "a.example", "selector": "s"}]}, "dkim[0].key_file", "required"),
    ({"dkim": [{"domain": "a.example", "selector": "s", "key_file": "/k", "key": "PEM"}]}, "dkim[0].key", "unknown key"),
    ({"dkim": {"domain": "a.example"}}, "dkim", "expected a list"),
]


@pytest.mark.parametrize(("raw", "path", "fragment"), SINGLE_PROBLEMS, ids=[p for _, p, _ in SINGLE_PROBLEMS])
def test_single_problem_is_reported_with_its_path(raw, path: str, fragment: str) -> None:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    assert fragment in problems[0], problems


def test_problems_at_several_levels_at_once() -> None:
    problems = problems_of({
        "typo": 1,
        "broker": {"typo": 1},
        "default": {"typo": 1},
        "providers": {"p": {"mx_suffix": ".p", "typo": 1}},
        "domains": {"d.example": {"typo": 1}},
        "patterns": [{"match": "x", "action": "bounce", "typo": 1}],
        "routes": [{"sender_domain": "a", "smarthost": "s", "typo": 1}],
        "dkim": [{"domain": "a", "selector": "s", "key_file": "k", "typo": 1}],
    })
    assert sorted(problems) == sorted(f"{p}: unknown key" for p in [
        "typo", "broker.typo", "default.typo", "providers.p.typo", "domains.d.example.typo",
        "patterns[0].typo", "routes[0].typo", "dkim[0].typo",
    ])


def test_invalid_pattern_duration_is_not_also_reported_missing() -> None:
    problems = problems_of({"patterns": [{"match": "x", "action": "suspend", "duration": "soon"}]})
    assert len(problems) == 1 and problems[0].startswith("patterns[0].duration: invalid duration")


@pytest.mark.parametrize("top", [[1, 2], "text", 42])
def test_top_level_not_a_mapping(top) -> None:
    problems = problems_of(top)
    assert len(problems) == 1 and "expected a mapping" in problems[0]


# --------------------------------------------------------------------------- files


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "default:\n  connection_limit: [1, 2\n  tls: required\n", "broken.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML")
    assert "line" in problem  # PyYAML's position survives


def test_yaml_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "default:\n\tconnection_limit: 1\n", "tabs.yaml")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unsafe_yaml_tag_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "default: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "rules.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: cannot read")
    assert "No such file" in problem


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("smtp:\n  helo: caf\xe9.example\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: ")


def test_load_config_accepts_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, "default:\n  connection_limit: 4\n")
    assert load_config(str(path)).default.connection_limit == 4


def test_bad_values_in_file_carry_paths(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        domains:
          slow.example:
            max_message_rate: 20/our
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["domains.slow.example.max_message_rate: invalid rate '20/our': unknown period 'our'"]


# --------------------------------------------------------------------------- property: fails closed, never crashes

_VOCAB = [
    "broker", "dns", "smtp", "metrics", "default", "providers", "domains", "patterns", "routes", "dkim",
    "url", "queue_type", "prefetch", "nameservers", "port", "helo", "bind", "connection_limit",
    "max_message_rate", "max_connection_rate", "max_deliveries_per_connection", "idle_timeout",
    "retry_intervals", "max_age", "tls", "mx_suffix", "mx", "match", "code", "enhanced", "action",
    "duration", "sender_domain", "smarthost", "username", "password", "password_env", "password_file",
    "tags", "domain", "selector", "key_file", "algorithm", "a.example",
]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["10m", "0s", "-1h", "20/our", "100/min", "1/0s", "nan/s", "inf", "1e400s", "[x]:25",
                     "suspend", "throttle", "bounce", "opportunistic", "rsa-sha256", "(?i)x", "(", "a{99999999999}",
                     "4.7.0", "quorum"]),
)
_keys = st.one_of(st.sampled_from(_VOCAB), st.text(max_size=6), st.integers(-3, 3))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_values, st.dictionaries(st.sampled_from(_VOCAB[:10]), _values, max_size=6)))
def test_parse_config_returns_config_or_config_error(raw) -> None:
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError always names at least one problem"
        assert all(isinstance(p, str) and ": " in p for p in exc.problems)
    else:
        assert isinstance(config, Config)


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("default:\n  connection_limit: 2\n  connection_limit: 5\n  bogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert any("line 3" in p and "'connection_limit' is given twice" in p for p in problems), problems
    assert "default.bogus: unknown key" in problems


def test_yaml_merge_keys_still_work(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("domains:\n  a.example: &x\n    connection_limit: 2\n  b.example:\n    <<: *x\n    max_age: 1h\n")
    config = load_config(path)
    b = next(d for d in config.domains if d.name == "b.example")
    assert b.policy.connection_limit == 2 and b.policy.max_age == 3600


def test_single_lane_reserve_keys():
    from mta.config import parse_config
    config = parse_config({"default": {"single_connections": 2, "single_rate_share": "10%"},
                           "domains": {"a.example": {"single_rate_share": 0.2}}})
    assert config.default.single_connections == 2 and config.default.single_rate_share == 0.1
    assert config.domains[0].policy.single_rate_share == 0.2


def test_single_lane_reserve_keys_name_bad_values():
    from mta.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as err:
        parse_config({"default": {"single_connections": -1, "single_rate_share": "80%"},
                      "providers": {"p": {"mx_suffix": [".p.example"], "single_rate_share": "lots"}}})
    text = "\n".join(err.value.problems)
    assert "default.single_connections" in text
    assert "default.single_rate_share" in text and "out of range" in text
    assert "providers.p.single_rate_share" in text


# ---- patterns: a key the action would ignore, and regexes that backtrack without end

PATTERN_PROBLEMS = [
    ({"match": "x", "action": "suspend", "duration": "1h", "connection_limit": 1}, "connection_limit", "not used by action suspend"),
    ({"match": "x", "action": "suspend", "duration": "1h", "max_message_rate": "1/min"}, "max_message_rate", "limits belong to action throttle"),
    ({"match": "x", "action": "suspend", "duration": "1h", "retry_intervals": ["1m"]}, "retry_intervals", "not used by action suspend"),
    ({"match": "x", "action": "bounce", "duration": "1h"}, "duration", "not used by action bounce"),
    ({"match": "x", "action": "bounce", "connection_limit": 1}, "connection_limit", "not used by action bounce"),
    ({"match": "x", "action": "bounce", "max_age": "1h"}, "max_age", "not used by action bounce"),
    ({"match": "x", "action": "retry", "duration": "10m"}, "duration", "not used by action retry"),
    ({"match": "x", "action": "retry", "max_message_rate": "1/s"}, "max_message_rate", "not used by action retry"),
    ({"match": "x", "action": "retry", "retry_intervals": ["5m"]}, "retry_intervals", "not used by action retry"),
    ({"match": "x", "action": "throttle", "duration": "1h", "connection_limit": 1, "retry_intervals": ["1h"]},
     "retry_intervals", "retries and maximum age stay"),
    ({"match": "x", "action": "throttle", "duration": "1h", "connection_limit": 1, "max_age": "2h"},
     "max_age", "not used by action throttle"),
    ({"match": "(a+)+", "action": "bounce"}, "match", "repetition inside a repetition"),
    ({"match": "(a*)*$", "action": "retry"}, "match", "refused"),
    ({"match": "(?i)(.*spam){20}", "action": "bounce"}, "match", "exponential"),
]


@pytest.mark.parametrize(("pattern", "key", "fragment"), PATTERN_PROBLEMS,
                         ids=[f"{p['action']}-{k}-{i}" for i, (p, k, _) in enumerate(PATTERN_PROBLEMS)])
def test_a_pattern_key_its_action_ignores_is_an_error(pattern, key, fragment) -> None:
    problems = problems_of({"patterns": [{"code": 421, "action": "bounce"}, pattern]})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"patterns[1].{key}: "), problems
    assert fragment in problems[0], problems


@pytest.mark.parametrize("pattern", [
    {"match": "x", "action": "suspend", "duration": "2h", "code": 421, "enhanced": "4.7.0"},
    {"match": "x", "action": "throttle", "duration": "1h", "connection_limit": 1, "max_message_rate": "1/min",
     "max_connection_rate": "1/min", "max_deliveries_per_connection": 5, "idle_timeout": "5s", "tls": "required",
     "data_timeout": "30s"},
    {"match": "x", "action": "bounce", "code": 451},
    {"enhanced": "5.7.1", "action": "retry"},
    {"match": r"(?:\d{1,3}\.){3}\d{1,3}|(?>\w+)+|a++", "action": "retry"},
])
def test_what_each_action_uses_is_accepted(pattern) -> None:
    assert len(parse_config({"patterns": [pattern]}).patterns) == 1


# ---- retry intervals that are no delay queue's length: rounded up, and said so

def test_retry_intervals_off_the_ladder_are_notes_not_errors(tmp_path: Path, capsys) -> None:
    from mta.cli import main
    from mta.config import retry_notes

    raw = {"default": {"retry_intervals": ["10m", "7m", "3d"]},
           "domains": {"slow.example": {"retry_intervals": ["90s"]}},
           "providers": {"p": {"mx_suffix": [".p.example"], "retry_intervals": ["1h"]}},
           "routes": [{"sender_domain": "a.example", "smarthost": "[s.example]:587", "retry_intervals": ["45m"]}]}
    assert retry_notes(parse_config(raw)) == [
        "default.retry_intervals[1]: 7m is not a delay queue length; the retry waits 10m (rounded up)",
        "default.retry_intervals[2]: 3d is not a delay queue length; the retry waits 2d (the longest delay there is)",
        "domains.slow.example.retry_intervals[0]: 90s is not a delay queue length; the retry waits 2m (rounded up)",
        "routes[0].retry_intervals[0]: 45m is not a delay queue length; the retry waits 1h (rounded up)",
    ]
    path = tmp_path / "rules.yaml"
    path.write_text("default:\n  retry_intervals: [10m, 7m]\n", encoding="utf-8")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr()
    assert "note: default.retry_intervals[1]: 7m is not a delay queue length; the retry waits 10m" in out.err
    assert "OK" in out.out


def test_the_default_and_example_intervals_need_no_note() -> None:
    assert retry_notes_of({}) == []
    assert retry_notes_of({"default": {"retry_intervals": ["10m", "10m", "30m", "30m", "1h", "1h", "2h"]}}) == []


def retry_notes_of(raw) -> list[str]:
    from mta.config import retry_notes

    return retry_notes(parse_config(raw))


def test_cluster_section_names_a_store_and_a_node() -> None:
    config = parse_config({"cluster": {"store": "redis://127.0.0.1:6379/0", "node": "mta-a"}})
    assert (config.cluster.store, config.cluster.node) == ("redis://127.0.0.1:6379/0", "mta-a")
    assert parse_config({}).cluster.store is None


def test_cluster_section_refuses_what_it_cannot_use() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"cluster": {"store": "http://x", "node": "a b", "nodes": 3}})
    problems = caught.value.problems
    assert any(p.startswith("cluster.store: expected a redis://") for p in problems)
    assert any(p.startswith("cluster.node: expected up to 64") for p in problems)
    assert "cluster.nodes: unknown key" in problems
