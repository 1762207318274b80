"""Routes: which sender goes through which smarthost, credentials and their redaction, the
pause after a refused AUTH and how it ends. Fakes for the clock and the resolver."""

import asyncio
import base64

import orjson
import pytest

from mta.config import ConfigError, parse_config
from mta.ops.control import Pauses
from mta.intake.message import decode
from mta.routing.mx import DnsFailure, MxAnswer, MxHost
from mta.routing.routes import RouteTable, from_domain, resolve_smarthost
from mta.routing.rules import Rules
from mta.smtp.client import Credentials, Reply


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(envelope="news@customer.example", recipient="a@dest.example", tags=(), from_header=None):
    mime = f"From: {from_header or '<' + (envelope or 'x@y.example') + '>'}\r\nSubject: s\r\n\r\nbody\r\n"
    body = orjson.dumps({"recipient": recipient, "envelope": envelope, "mime": mime, "tags": list(tags)})
    return decode(body, {}, "bulk", 0.0)


def table(routes, environ=None, clock=None, pauses=None):
    config = parse_config({"routes": [{k: v for k, v in r.items() if v is not None} for r in routes]})
    return RouteTable(config.routes, Rules(config), pauses if pauses is not None else Pauses(), clock or Clock(),
                      environ if environ is not None else {"PW": "s3cret-pw"})


ROUTE = {"sender_domain": "customer.example", "smarthost": "[smtp.customer.example]:587",
         "username": "u@customer.example", "password_env": "PW", "max_message_rate": "6000/h"}


@pytest.mark.parametrize("head, domain", [
    ("From: Shop <shop@Brand.Example>", "brand.example"),
    ("From: shop@brand.example", "brand.example"),
    ("from:\r\n  \"Shop, Inc.\" <shop@brand.example>", "brand.example"),
    ("Subject: none", None),
    ("From: undisclosed", None),
])
def test_from_domain(head, domain):
    assert from_domain(f"X-A: 1\r\n{head}\r\nTo: b@c.example\r\n\r\nFrom: body@other.example\r\n".encode()) == domain


def test_envelope_route_is_its_own_destination_with_its_own_limits():
    routes = table([ROUTE])
    entry = routes.match(job())
    assert entry is not None and entry.key == "route:customer.example"
    assert (entry.host, entry.port, entry.literal, entry.implicit_tls) == ("smtp.customer.example", 587, True, False)
    assert entry.resolved.key == "route:customer.example"
    assert entry.resolved.policy.max_message_rate.per_second == pytest.approx(6000 / 3600)
    assert entry.resolved.policy.connection_limit == 10  # from the default
    assert routes.match(job(envelope="news@other.example")) is None
    assert routes.match(job(envelope="")) is None  # the null sender has no domain


def test_first_matching_route_wins_tags_from_header_and_wildcards():
    routes = table([
        {**ROUTE, "name": "vip", "tags": ["vip"], "smarthost": "smtps.customer.example:465"},
        {**ROUTE},
        {**ROUTE, "name": "brand", "sender_domain": "brand.example", "sender_match": "from",
         "smarthost": "[10.0.0.1]:25"},
        {**ROUTE, "name": "subs", "sender_domain": "*.customer.example", "smarthost": "[10.0.0.2]:25"},
    ])
    assert routes.match(job(tags=["vip"])).key == "route:vip"
    assert routes.match(job(tags=["vip"])).implicit_tls is True  # port 465
    assert routes.match(job(tags=["other"])).key == "route:customer.example"
    assert routes.match(job(envelope="b@esp.example", from_header="Brand <x@brand.example>")).key == "route:brand"
    assert routes.match(job(envelope="x@brand.example", from_header="<x@esp.example>")) is None
    assert routes.match(job(envelope="x@eu.customer.example")).key == "route:subs"


def test_password_from_file_and_problems_at_start(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file-pw\n")
    entry = table([{**ROUTE, "password_env": None, "password_file": str(secret)}]).entries[0]
    assert entry.credentials == Credentials("u@customer.example", "from-file-pw")
    with pytest.raises(ConfigError) as info:
        table([ROUTE, {**ROUTE, "name": "two", "password_env": None, "password_file": str(tmp_path / "missing")}],
              environ={})
    assert info.value.problems == [
        "routes[0] (customer.example): environment variable PW is not set or empty",
        "routes[1] (two): cannot read password file " + str(tmp_path / "missing") + ": No such file or directory",
    ]
    with pytest.raises(ConfigError, match="username: required"):
        table([{**ROUTE, "username": None}])


def test_config_route_names_and_new_keys():
    config = parse_config({"routes": [{**ROUTE, "sender_match": "from", "implicit_tls": True, "ca_file": "/ca.pem"}]})
    route = config.routes[0]
    assert (route.name, route.sender_match, route.implicit_tls, route.ca_file) == (
        "customer.example", "from", True, "/ca.pem")
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [ROUTE, {**ROUTE, "tags": ["x"]}, {**ROUTE, "name": "b", "sender_match": "header",
                                                                   "implicit_tls": "yes"}]})
    assert info.value.problems == [
        "routes[1]: route name 'customer.example' is used twice: give each route its own `name`",
        "routes[2].sender_match: expected one of envelope, from, got 'header'",
        "routes[2].implicit_tls: expected true or false, got 'yes'",
    ]


def test_credentials_never_show():
    credentials = Credentials("user@x.example", "hunter2-long")
    assert "hunter2" not in repr(credentials) and "hunter2" not in str(credentials)
    token = base64.b64encode(b"\0user@x.example\0hunter2-long").decode()
    text = f"535 5.7.8 bad: hunter2-long {token} {base64.b64encode(b'hunter2-long').decode()}"
    assert credentials.scrub(text) == "535 5.7.8 bad: *** *** ***"


def test_refused_auth_pauses_route_until_password_file_changes(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("old-password")
    clock, pauses = Clock(), Pauses()
    routes = table([{**ROUTE, "password_env": None, "password_file": str(secret)}], clock=clock, pauses=pauses)
    reply = routes.auth_failed("route:customer.example", Reply(535, "5.7.8 Authentication credentials invalid", "auth"))
    assert reply.code == 535 and "paused" in reply.text and "mta resume route:customer.example" in reply.text
    assert pauses.paused(clock(), "route:customer.example")
    (status,) = routes.status()
    assert status["paused"] and "refused" in status["reason"] and "old-password" not in str(status)

    routes.match(job())  # unchanged file: stays paused
    secret.write_text("new-password!")
    routes.match(job())  # too soon to look again
    assert pauses.paused(clock(), "route:customer.example")
    clock.now += 10
    routes.match(job())
    assert not pauses.paused(clock(), "route:customer.example")
    assert routes.entries[0].credentials.password == "new-password!"
    assert routes.status()[0]["paused"] is False


def test_operator_resume_clears_the_reason():
    clock, pauses = Clock(), Pauses()
    routes = table([ROUTE], clock=clock, pauses=pauses)
    routes.auth_failed("route:customer.example", Reply(535, "no", "auth"))
    pauses.apply({"command": "resume", "target": "route:customer.example"}, clock())
    routes.match(job())
    assert routes.faults == {} and routes.status()[0]["reason"] is None


class FakeResolver:
    def __init__(self, answer):
        self.answer = answer
        self.asked = []

    async def resolve(self, domain):
        self.asked.append(("mx", domain))
        return self.answer

    async def resolve_static(self, entries):
        self.asked.append(("static", entries))
        return self.answer


def test_smarthost_resolution():
    routes = table([
        {**ROUTE, "smarthost": "[192.0.2.7]:2525", "name": "literal"},
        {**ROUTE, "smarthost": "[smtp.customer.example]:587", "name": "named"},
        {**ROUTE, "smarthost": "relay.customer.example:587", "name": "mx"},
    ])
    literal, named, mx = routes.entries
    answer = MxAnswer((MxHost("in1.relay.example", 10, ("192.0.2.1",)),))
    resolver = FakeResolver(answer)
    got = asyncio.run(resolve_smarthost(resolver, literal))
    assert got.hosts == (MxHost("192.0.2.7", 0, ("192.0.2.7",), 2525),) and resolver.asked == []
    asyncio.run(resolve_smarthost(resolver, named))
    assert resolver.asked == [("static", ("smtp.customer.example:587",))]
    got = asyncio.run(resolve_smarthost(resolver, mx))
    assert resolver.asked[-1] == ("mx", "relay.customer.example") and got.hosts[0].port == 587
    failing = FakeResolver(DnsFailure(True, "5.1.2", "host does not exist (NXDOMAIN)"))
    failure = asyncio.run(resolve_smarthost(failing, mx))
    assert failure.permanent is False and "smarthost relay.customer.example:587" in failure.description


def test_refused_again_after_a_resume_pauses_again():
    clock, pauses = Clock(), Pauses()
    routes = table([ROUTE], clock=clock, pauses=pauses)
    routes.auth_failed("route:customer.example", Reply(535, "no", "auth"))
    pauses.apply({"command": "resume", "target": "route:customer.example"}, clock())
    # mail already queued in the destination meets the same refusal before any new match
    routes.auth_failed("route:customer.example", Reply(535, "no", "auth"))
    assert pauses.paused(clock(), "route:customer.example")


def test_tls_verify_is_on_unless_a_route_turns_it_off():
    assert parse_config({"routes": [ROUTE]}).routes[0].tls_verify is True
    assert parse_config({"routes": [{**ROUTE, "tls_verify": False}]}).routes[0].tls_verify is False
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [{**ROUTE, "tls_verify": "no"}]})
    assert info.value.problems == ["routes[0].tls_verify: expected true or false, got 'no'"]


def test_unverified_tls_for_credentials_is_a_warning_at_every_load(caplog):
    with caplog.at_level("WARNING", logger="mta.routes"):
        routes = table([ROUTE, {**ROUTE, "name": "lax", "tls_verify": False}])
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "routes[1] (lax): tls_verify is false" in warned[0]
    assert "u@customer.example" in warned[0] and "s3cret" not in warned[0]
    caplog.clear()
    config = parse_config({"routes": [{**ROUTE, "tls_verify": False}]})
    with caplog.at_level("WARNING", logger="mta.routes"):
        routes.reload(config.routes, Rules(config))
    assert ["tls_verify is false" in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.parametrize("tls_verify", [True, False])
def test_route_connector_says_whether_credentials_need_verified_tls(tls_verify):
    seen = {}

    class Base:
        async def open(self, mx, ip, port, **kwargs):
            seen.update(kwargs)

    routes = table([{**ROUTE, "tls_verify": tls_verify}])
    asyncio.run(routes.connector("route:customer.example", Base()).open("h", "192.0.2.1", 587, tls="opportunistic",
                                                                          timeouts=None))
    assert seen["auth"] is not None and seen["auth_verified"] is tls_verify


def test_a_refused_route_is_told_to_the_other_nodes_and_taken_from_them():
    clock, pauses = Clock(), Pauses()
    routes = table([ROUTE], clock=clock, pauses=pauses)
    told = []
    routes.on_fault = lambda key, why: told.append((key, why))
    routes.auth_failed("route:customer.example", Reply(535, "5.7.8 invalid", "auth"))
    routes.auth_failed("route:customer.example", Reply(535, "5.7.8 invalid", "auth"))  # paused already: told once
    assert [key for key, _ in told] == ["route:customer.example"] and "refused" in told[0][1]

    other_pauses = Pauses()
    other = table([ROUTE], clock=clock, pauses=other_pauses)
    other.adopt_fault("route:customer.example", told[0][1], clock() + 3600)
    other.adopt_fault("route:nobody", "refused", clock() + 3600)  # a route this node does not have: nothing
    assert other_pauses.paused(clock(), "route:customer.example")
    assert not other_pauses.paused(clock(), "route:nobody")
    assert other.status()[0]["reason"].endswith("(seen by another node)")
    clock.now += 3601  # the refusal it was told of is over: its mail comes by, the route is tried again
    other.match(job())
    assert not other_pauses.paused(clock(), "route:customer.example") and other.faults == {}
