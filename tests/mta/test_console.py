"""The operator's console (SPEC §9): its pages from a status snapshot and the event store,
everything from outside escaped; the login rule; read-only unless console.allow_pause,
forms with a CSRF token; the snapshot taken on the engine's loop; /console beside
/metrics on one endpoint. An engine made of fakes, a real loop in a thread, a real socket."""

import asyncio
import base64
import threading
import urllib.error
import urllib.request

import pytest

from mta.config import ConfigError, parse_config
from mta.console import pages
from mta.console.app import Console
from mta.console.auth import Gate, host_of, is_loopback
from mta.ops import status
from mta.ops.httpd import start
from mta.submission.passwords import hash_password
from mta.tracking.events import COLUMNS
from mta.tracking.store import EventStore
from tests.fakes import FakeDestination, FakeEngine, snapshot

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script>'


class FakeJob:
    def __init__(self, domain, lane="bulk", destination=None):
        self.domain, self.lane, self.destination, self.first_seen = domain, lane, destination, NOW - 30


def engine(**raw):
    config = parse_config({"domains": {"slow.example": {"connection_limit": 4, "max_message_rate": "20/min"}},
                           **raw})
    e = FakeEngine(config, clock=lambda: NOW)
    e.counts = {"consumed": 12, "delivered": 5, "invalid": 1}
    policy = e.rules.resolve("slow.example", None).policy
    throttled = FakeDestination("domain:slow.example", snapshot(
        mode="backoff", reason=f"pattern 'too many' (421): 421 4.7.0 {EVIL}", since=NOW - 60, until=NOW + 300,
        bulk=3, workers=1, connections=1, connection_limit=4, connections_allowed=2, per_second=0.33,
        throttled=True, message_rate=policy.max_message_rate, connection_rate=policy.max_connection_rate,
        deliveries_per_connection=policy.max_deliveries_per_connection, last_error=f"mx [192.0.2.1]: {EVIL}"))
    e.destinations[throttled.key] = throttled
    e.pauses.apply({"command": "pause", "target": "paused.example", "until": NOW + 600}, NOW)
    e.metrics.not_tried(FakeJob("paused.example"), NOW)
    e.metrics.outcome(FakeJob("slow.example", destination=throttled), "delivered", None, NOW)
    e.metrics.outcome(FakeJob("slow.example", "single", destination=throttled), "deferred", None, NOW)
    return e


def event(t, message_id, recipient, status_, **fields):
    row = dict.fromkeys(COLUMNS)
    row.update({"time": t, "id": message_id, "recipient": recipient, "status": status_, "final": 0, **fields})
    return row


# ---- pages


def test_overview_shows_the_last_minute_per_lane_and_processed():
    html = pages.overview(status.snapshot(engine()), pauses=1, stuck=2)
    last = html.split('id=last-minute', 1)[1].split("</table>", 1)[0]
    assert "<th>all lanes</th><td class=n>12</td>" in last  # processed: consumed since start
    for name, _ in status.KINDS:
        assert f"<th>{name}</th>" in last
    assert "<th>lane single</th>" in last and "<th>lane bulk</th>" in last
    assert "1 pause(s)" in html and "2 stuck message(s)" in html


def test_destinations_table_is_sortable_and_escapes_reasons():
    html = pages.destinations(status.snapshot(engine()))
    assert EVIL not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    table = html.split("id=destinations", 1)[1]
    assert "<th data-sort=t>destination</th>" in table and "<th data-sort=n>queued</th>" in table
    assert '<a href="/console/destination?key=domain%3Aslow.example">domain:slow.example</a>' in table
    assert '<td class="backoff">backoff</td>' in table and '<td class="paused">paused</td>' in table


def test_destination_detail_shows_what_the_snapshot_has():
    snap = status.snapshot(engine())
    html = pages.destination(snap, "domain:slow.example")
    for text in ("backoff", "421 4.7.0", "in 5m", "limit: connection limit</th><td>4", "20/min",
                 "default + domains.slow.example", "held (not tried"):
        assert text in html, text
    assert EVIL not in html
    assert pages.destination(snap, "domain:idle.example") is None


def test_destination_detail_shows_its_last_replies_that_were_not_2xx():
    e = engine()
    e.outcomes.replies.note("domain:slow.example", NOW - 3, "rcpt", 451, f"4.7.1 slow down {EVIL}", "mx.slow.example",
                            "192.0.2.9")
    html = pages.destination(status.snapshot(e, "domain:slow.example"), "domain:slow.example")
    assert "Last replies that were not 2xx" in html and EVIL not in html
    assert "<td>rcpt</td><td>mx.slow.example [192.0.2.9]</td><td>451</td><td>4.7.1 slow down &lt;script" in html


def test_message_lookup_shows_every_event_as_trace_does_escaped():
    events = [event(NOW - 5, "order-1", f"{EVIL}@ok.example", "accepted", lane="single", tags="shop"),
              event(NOW, "order-1", f"{EVIL}@ok.example", "delivered", attempts=1, phase="message",
                    mx="mx.ok.example", ip="192.0.2.7", code=250, description=f"2.0.0 queued {EVIL}", final=1)]
    html = pages.messages("order-1", events, 30)
    assert EVIL not in html
    assert "<code>order-1</code> → <code>&lt;script&gt;" in html and "(lane single, tags shop)" in html
    rows = html.split('<tr class="event ')[1:]
    assert [r.split('"', 1)[0] for r in rows] == ["accepted", "delivered"]
    assert "<td>attempt 1</td><td>message</td><td>mx.ok.example [192.0.2.7]</td><td>250 2.0.0 queued &lt;script" \
           in rows[1]
    assert "No events for <code>&lt;b&gt;</code>" in pages.messages("<b>", [], 30)


def test_pauses_are_read_only_unless_allowed():
    snap = status.snapshot(engine())
    read_only = pages.pauses(snap, False, "tok")
    assert "paused.example" in read_only and "paused by operator (mta pause)" in read_only
    assert "<form method=post" not in read_only and "console.allow_pause: true" in read_only
    allowed = pages.pauses(snap, True, "tok")
    assert allowed.count('<input type=hidden name=csrf value="tok">') == 2  # resume paused.example, pause form


def test_stuck_page_links_each_message_to_its_lookup():
    found = [{"id": "a&b", "recipient": "x@y.example", "first": NOW - 4000, "last": NOW - 3700, "status": "held",
              "description": "not tried: paused"}]
    html = pages.stuck(found, 3600, NOW)
    assert '<a href="/console/message?q=a%26b">a&amp;b</a>' in html and ">61m<" in html


def test_the_script_and_style_are_the_only_ones_allowed():
    assert pages.CSP.startswith("default-src 'none'; script-src 'sha256-")
    assert "unsafe-inline" not in pages.CSP


# ---- config and the login rule


def test_console_section_defaults_and_users():
    config = parse_config({})
    assert (config.console.enabled, config.console.allow_pause, config.console.users) == (True, False, ())
    hashed = hash_password("pw", ln=10)
    config = parse_config({"console": {"allow_pause": True, "users": [{"username": "ops", "password_hash": hashed}]}})
    assert config.console.users[0].username == "ops" and config.console.allow_pause
    with pytest.raises(ConfigError) as problem:
        parse_config({"console": {"users": [{"username": "ops", "password": "clear"}]}})
    assert "console.users: [0]: expected exactly username and password_hash" in str(problem.value)
    with pytest.raises(ConfigError) as problem:
        parse_config({"console": {"users": [{"username": "ops", "password_hash": "plain"}]}})
    assert "console.users: [0].password_hash: not an scrypt hash" in str(problem.value)


@pytest.mark.parametrize(("address", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                                   ("localhost", True), ("0.0.0.0", False), ("192.0.2.1", False),
                                                   ("mta.example", False)])
def test_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_host_of():
    assert [host_of(h) for h in ("127.0.0.1:9108", "[::1]:9108", "localhost", "::1")] == \
           ["127.0.0.1", "::1", "localhost", "::1"]


def test_without_users_loopback_only_and_the_host_must_be_loopback():
    gate = Gate("127.0.0.1", ())
    assert gate.refused is None
    assert gate.admit(None, "127.0.0.1:9108") == ""
    assert gate.admit(None, "rebound.example:9108") is None  # DNS rebinding
    assert "needs a login" in Gate("0.0.0.0", ()).refused


def test_users_need_their_password():
    hashed = hash_password("s3cret", ln=10)
    users = parse_config({"console": {"users": [{"username": "ops", "password_hash": hashed}]}}).console.users
    gate = Gate("0.0.0.0", users)
    assert gate.refused is None

    def basic(text):
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert gate.admit(None, "mta.example") is None
    assert gate.admit(basic("ops:wrong"), "mta.example") is None
    assert gate.admit(basic("nobody:s3cret"), "mta.example") is None
    assert gate.admit("Basic !!!", "mta.example") is None
    assert gate.admit(basic("ops:s3cret"), "mta.example") == "ops"
    assert gate.admit(basic("ops:s3cret"), "mta.example") == "ops"  # remembered
    assert gate.admit(basic("ops:s3cre"), "mta.example") is None


# ---- the app on a loop, behind the endpoint


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def serve(loop, tmp_path, **raw):
    e = engine(**raw)
    store_path = str(tmp_path / "events.sqlite")
    store = EventStore(store_path)
    store.write([(NOW - 5, "order-1", "jane@ok.example", "accepted", 0, 0, "single", None, None, None, None, None,
                  None, "shop", None, None)])
    store.close()
    console = Console(e, loop, store_path=store_path)
    server = start("127.0.0.1", 0, e.metrics.registry, console)
    return console, server, f"http://127.0.0.1:{server.server_address[1]}"


def get(url, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def test_every_page_served_beside_metrics(loop, tmp_path):
    taken_on = []
    console, server, base = serve(loop, tmp_path)
    original = status.snapshot

    def on_which_thread(eng, target=None):
        taken_on.append(threading.current_thread())
        return original(eng, target)

    try:
        status.snapshot = on_which_thread
        for path, text in (("/console", "Last 60 seconds"), ("/console/destinations", "domain:slow.example"),
                           ("/console/destination?key=domain%3Aslow.example", "limit: connection limit"),
                           ("/console/message?q=order-1", "jane@ok.example"), ("/console/pauses", "paused.example"),
                           ("/console/stuck", "Stuck messages")):
            code, body, headers = get(base + path)
            assert code == 200 and text in body, (path, body[:300])
            assert headers["Content-Security-Policy"] == pages.CSP
        assert get(base + "/console/destination?key=nothing")[0] == 404
        assert "mta_messages_processed_total 12.0" in get(base + "/metrics")[1]
    finally:
        status.snapshot = original
        server.shutdown()
        server.server_close()
    assert taken_on and all(t.name != "metrics-http" and t is not threading.main_thread() for t in taken_on)
    assert all(t.ident == loop._thread_id for t in taken_on)  # on the engine's loop, not the HTTP thread


def test_forms_need_allow_pause_and_the_csrf_token(loop, tmp_path, monkeypatch):
    sent = []
    console, server, base = serve(loop, tmp_path)
    try:
        monkeypatch.setattr(console, "control", lambda *a: sent.append(a) or (1, 1, []))
        assert get(base + "/console/pause", f"csrf={console.csrf}&target=x.example".encode())[0] == 403
        console.settings = parse_config({"console": {"allow_pause": True}}).console
        code, body, _ = get(base + "/console/pause", b"target=x.example&csrf=forged")
        assert code == 403 and "CSRF" in body and not sent
        code, body, _ = get(base + "/console/pause", f"csrf={console.csrf}&target=x.example&duration=30m".encode())
        assert code == 200 and "pause x.example: acknowledged by 1 MTA(s) of 1" in body
        code, body, _ = get(base + "/console/resume", f"csrf={console.csrf}&target=x.example".encode())
        assert code == 200 and sent == [("pause", "x.example", 1800.0), ("resume", "x.example", None)]
    finally:
        server.shutdown()
        server.server_close()


def test_a_login_is_asked_for_when_users_are_configured(loop, tmp_path):
    hashed = hash_password("pw", ln=10)
    console, server, base = serve(loop, tmp_path, console={"users": [{"username": "ops", "password_hash": hashed}]})
    try:
        code, _, headers = get(base + "/console")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        login = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
        assert get(base + "/console", headers=login)[0] == 200
        assert get(base + "/metrics")[0] == 200  # the metrics stay as they were
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_loop_gets_503_not_a_stuck_thread(loop, tmp_path, monkeypatch):
    import mta.console.app as app

    monkeypatch.setattr(app, "SNAPSHOT_TIMEOUT", 0.2)
    console, server, base = serve(loop, tmp_path)
    release = threading.Event()
    loop.call_soon_threadsafe(lambda: release.wait(5))  # the engine's loop blocked
    try:
        code, body, headers = get(base + "/console/destinations")
        assert code == 503 and "did not answer within 0.2 s" in body and headers["Retry-After"] == "5"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_mta_check_warns_when_the_console_would_refuse():
    from mta.console.auth import warning

    assert warning(parse_config({})) is None
    assert "will not be served" in warning(parse_config({"metrics": {"address": "0.0.0.0"}}))
    assert warning(parse_config({"metrics": {"address": "0.0.0.0"}, "console": {"enabled": False}})) is None
    hashed = hash_password("pw", ln=10)
    assert warning(parse_config({"metrics": {"address": "0.0.0.0"},
                                 "console": {"users": [{"username": "a", "password_hash": hashed}]}})) is None
