"""What `mta status` and the metrics say about destinations with a state machine and a
connection window (backoff with its reason and end, limits in force), and about an
operator's pause of a domain, from an engine made of fakes: no broker, no event loop."""

from prometheus_client import generate_latest

from mta.ops import status
from mta.config import parse_config
from tests.fakes import FakeDestination, FakeEngine, snapshot

NOW = 1_800_000_000.0


class FakeJob:
    def __init__(self, domain, lane="bulk", destination=None):
        self.domain = domain
        self.lane = lane
        self.destination = destination
        self.first_seen = NOW - 30


def engine_with_a_throttled_and_a_paused_destination():
    config = parse_config({"default": {"connection_limit": 10},
                           "domains": {"slow.example": {"connection_limit": 4, "max_message_rate": "20/min"}}})
    engine = FakeEngine(config, clock=lambda: NOW)
    engine.counts = {"consumed": 12, "delivered": 5, "invalid": 1}
    engine.crashes = {"settler": 1}
    engine.resolver.lookups, engine.resolver.cache_hits = 3, 7
    policy = engine.rules.resolve("slow.example", None).policy
    throttled = FakeDestination("domain:slow.example", snapshot(
        mode="backoff", reason="pattern '(?i)too many' (421): 421 4.7.0 Too many connections",
        since=NOW - 60, until=NOW + 5340, bulk=3, workers=1, connections=1, connection_limit=4,
        connections_allowed=2, per_second=policy.max_message_rate.per_second, throttled=True,
        message_rate=policy.max_message_rate, connection_rate=policy.max_connection_rate,
        deliveries_per_connection=policy.max_deliveries_per_connection,
        last_error="mx.slow.example [192.0.2.1]: 421 4.7.0 Too many connections"))
    engine.destinations[throttled.key] = throttled
    engine.pauses.apply({"command": "pause", "target": "paused.example", "until": NOW + 600}, NOW)
    job = FakeJob("slow.example", destination=throttled)
    engine.metrics.not_tried(job, NOW)  # held while in backoff: throttled
    engine.metrics.not_tried(FakeJob("paused.example"), NOW)
    engine.metrics.outcome(job, "delivered", None, NOW)
    return engine


def test_snapshot_shows_mode_reason_times_and_limits_in_force():
    snap = status.snapshot(engine_with_a_throttled_and_a_paused_destination())
    rows = {d["destination"]: d for d in snap["destinations"]}
    throttled = rows["domain:slow.example"]
    assert throttled["state"] == "backoff"
    assert "Too many connections" in throttled["reason"]
    assert (throttled["since"], throttled["until"]) == (NOW - 60, NOW + 5340)
    assert throttled["limits"]["connection_limit"] == 4 and throttled["limits"]["connections_allowed"] == 2
    assert throttled["limits"]["max_message_rate"] == "20/min"
    assert (throttled["queued"], throttled["in_flight"], throttled["connections"], throttled["held"]) == (3, 1, 1, 1)
    assert throttled["rules"] == ["default", "domains.slow.example"]
    assert throttled["last_error"].endswith("Too many connections")
    paused = rows["paused.example"]
    assert paused["state"] == "paused" and paused["until"] == NOW + 600
    assert snap["lanes"]["bulk"] == {"not_tried": 2, "delivered": 1, "attempt": 1}
    assert snap["last_minute"]["all"] == {"not_tried": 2, "delivered": 1, "attempt": 1}
    assert snap["budget"] == {"limit": 10, "in_use": 0, "waiting": 0}

    text = status.render({"queues": {"mta.bulk": {"depth": 4, "consumers": 1}, "mta.single": None},
                          "mtas": [snap]})
    assert "domain:slow.example  backoff: pattern '(?i)too many' (421)" in text
    assert "since 07:59:00Z, until 09:29:00Z (in 89m)" in text  # NOW - 60 s, NOW + 5340 s
    assert "limits: 2/4 connections, 20/min messages" in text
    assert "in flight 1, queued 3, connections 1, held 1, last error: " in text
    assert "paused.example  paused: paused by operator (mta pause)" in text
    assert "connections: 0 of 10 (process budget), 0 destination(s) waiting for a slot" in text
    assert "mta.single         (not declared)" in text


def test_metrics_show_the_backoff_and_the_pause_with_their_reasons():
    text = generate_latest(engine_with_a_throttled_and_a_paused_destination().metrics.registry).decode()
    assert 'mta_destination_state{destination="domain:slow.example",state="backoff"} 1.0' in text
    assert 'mta_destination_state{destination="paused.example",state="paused"} 1.0' in text
    assert ('mta_destination_backoff_info{destination="domain:slow.example",reason="pattern \'(?i)too many\' '
            '(421): 421 4.7.0 Too many connections",state="backoff"} 1.80000534e+09') in text
    assert 'mta_not_tried_total{destination="domain:slow.example",lane="bulk",reason="throttled"} 1.0' in text
    assert 'mta_not_tried_total{destination="paused.example",lane="bulk",reason="paused"} 1.0' in text
    assert 'mta_destination_connections_allowed{destination="domain:slow.example"} 2.0' in text
    assert 'mta_destination_connection_limit{destination="domain:slow.example"} 4.0' in text
    assert 'mta_destinations{state="backoff"} 1.0' in text and 'mta_destinations{state="paused"} 1.0' in text
    assert "mta_dns_cache_hits_total 7.0" in text and "mta_messages_processed_total 12.0" in text
