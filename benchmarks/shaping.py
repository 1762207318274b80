"""Shaping fidelity: for each scenario, the configured limit and what the sink observed.

    .venv/bin/python benchmarks/shaping.py            # every scenario, about 4 minutes
    .venv/bin/python benchmarks/shaping.py rate dead  # some of them

Starts a private RabbitMQ node, dnsmasq with the test zone and the scripted aiosmtpd sinks
of the test bed (which record every connection and acceptance), then runs each scenario
against its own vhost and MTA process and prints one line per measured quantity:

- connections: a destination limited to 2 connections (slow receiver, so it wants more);
- rate: a destination limited to 20/s over 30 s (600 messages): most accepted in any 1 s
  and 10 s window, and the time it took against the time the rate allows;
- too-many: a receiver that greets a 4th simultaneous session with "421 too many
  connections": sessions it served at once, refusals, when the last refusal came;
- rate-limited: a receiver that answers "421 rate limited" above 10 msg/s (the MTA is
  configured for 200/s and has no rule for it): accepted rate in 10 s windows once
  converged, refusals, convergence time (from the first acceptance to the last 10 s window
  that is outside 60-100 % of the limit);
- dead: an MX that refuses every connection for 15 s then recovers: when the destination
  was paused, when its mail was delivered, attempts counted;
- isolation: 500 messages to a 50/s domain alone, then mixed into 5,000 for a 5/s domain.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.testbed.amqp import collect_results, make_message, publish  # noqa: E402
from tests.testbed.config import write_config  # noqa: E402
from tests.testbed.dns import OK_MX, SHARED_MX, Dnsmasq, standard_sink_addresses, standard_zone  # noqa: E402
from tests.testbed.mtaproc import MtaProcess  # noqa: E402
from tests.testbed.rabbit import RabbitNode  # noqa: E402
from tests.testbed.sinks import SinkFarm  # noqa: E402
from tests.testbed.util import free_port  # noqa: E402


def most_in_window(times: list[float], width: float) -> int:
    j, best = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


class Bed:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mta-shaping-")
        port = free_port(lo=20000, hi=32000)
        self.rabbit = RabbitNode(os.path.join(self.dir, "rabbit"), port=port, dist_port=port + 20000,
                                 nodename=f"mtashape{port}@localhost", epmd_port=port + 21000)
        self.dns = Dnsmasq(records=standard_zone(100))
        self.sinks = SinkFarm(standard_sink_addresses(100))
        self.n = 0

    def __enter__(self) -> "Bed":
        self.rabbit.start()
        self.dns.start()
        self.sinks.start()
        return self

    def __exit__(self, *exc) -> None:
        for part in (self.sinks, self.dns, self.rabbit):
            try:
                part.stop()
            except Exception as err:  # stop the rest regardless
                print(f"stopping {part.__class__.__name__}: {err}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)

    def scenario(self, **overrides):
        """A fresh vhost, reset sinks, a config and a started MTA: (url, mta)."""
        self.n += 1
        url = self.rabbit.add_vhost(f"shape{self.n}")
        self.sinks.reset()
        self.sinks.clear_rules()
        path = write_config(os.path.join(self.dir, f"mta{self.n}.yaml"), url, self.dns.port, self.sinks.port,
                            **overrides)
        mta = MtaProcess(path)
        mta.start()
        mta.wait_ready(url)
        return url, mta


def row(scenario: str, quantity: str, limit: str, observed: str) -> None:
    print(f"| {scenario} | {quantity} | {limit} | {observed} |", flush=True)


def ids(prefix: str, n: int, domain: str) -> dict[str, str]:
    return {f"{prefix}-{i}": f"{prefix}{i}@{domain}" for i in range(n)}


def run(bed: Bed, url: str, mta: MtaProcess, msgs: dict[str, str], timeout: float = 300) -> dict:
    publish(url, "bulk", [make_message(i, r) for i, r in msgs.items()])
    try:
        return collect_results(url, msgs, timeout=timeout, settle=0.3)
    finally:
        mta.terminate()


def connections(bed: Bed) -> None:
    bed.sinks.set_data_delay(OK_MX[1], 0.05)
    url, mta = bed.scenario(domains={"ok1.test": {"connection_limit": 2}})
    run(bed, url, mta, ids("cl", 300, "ok1.test"))
    row("connection_limit 2", "most simultaneous sessions", "2", str(bed.sinks.max_concurrent()[OK_MX[1]]))


def rate(bed: Bed) -> None:
    url, mta = bed.scenario(domains={"ok2.test": {"max_message_rate": "20/s", "connection_limit": 5}})
    run(bed, url, mta, ids("mr", 600, "ok2.test"))
    times = sorted(a.time for a in bed.sinks.accepted() if a.sink == OK_MX[2])
    row("max_message_rate 20/s", "most accepted in any 1 s", "20", str(most_in_window(times, 1.0)))
    row("", "most accepted in any 10 s / 10", "20", f"{most_in_window(times, 10.0) / 10:.1f}")
    row("", "600 messages took", f"{599 / 20:.2f} s", f"{times[-1] - times[0]:.2f} s")


def too_many(bed: Bed) -> None:
    sink = OK_MX[3]
    bed.sinks.set_session_limit(sink, 3)
    bed.sinks.set_data_delay(sink, 0.05)
    url, mta = bed.scenario(domains={"ok3.test": {"connection_limit": 10, "max_deliveries_per_connection": 20}})
    run(bed, url, mta, ids("tm", 900, "ok3.test"))
    accepted = sorted(a.time for a in bed.sinks.accepted() if a.sink == sink)
    refusals = sorted(e.time for e in bed.sinks.events() if e.kind == "refused")
    row("receiver takes 3 sessions (421 above)", "most sessions served at once", "3",
        str(bed.sinks.max_admitted().get(sink, 0)))
    row("", "refusals / last refusal after", "-",
        f"{len(refusals)} / {refusals[-1] - accepted[0]:.1f} s of {accepted[-1] - accepted[0]:.1f} s"
        if refusals else "0")


def rate_limited(bed: Bed) -> None:
    limit = 10
    bed.sinks.set_rate_limit(SHARED_MX, limit)
    url, mta = bed.scenario(default={"retry_intervals": ["2s"], "max_age": "10m"},
                            domains={"shared-a.test": {"max_message_rate": "200/s", "connection_limit": 4}})
    run(bed, url, mta, ids("rl", 600, "shared-a.test"))
    accepted = sorted(a.time for a in bed.sinks.accepted() if a.sink == SHARED_MX)
    refused = [e.time for e in bed.sinks.events() if "Rate limited" in e.reply]
    start, end = accepted[0], accepted[-1]
    windows = []
    t = start
    while t + 10 <= end:
        windows.append((t, sum(1 for a in accepted if t <= a < t + 10) / 10))
        t += 1.0
    outside = [w for w, r in windows if not 0.6 * limit <= r <= limit * 1.05]
    converged = (outside[-1] + 10 - start) if outside else 0.0
    steady = [r for w, r in windows if w >= start + converged]
    row("receiver takes 10/s (421 above), configured 200/s", "accepted per s, 10 s windows once converged",
        str(limit), f"{min(steady):.1f} .. {max(steady):.1f}" if steady else "-")
    row("", "convergence time", "-", f"{converged:.1f} s")
    row("", "refusals / messages", "-", f"{len(refused)} / 600")


def dead(bed: Bed) -> None:
    sink = OK_MX[2]
    bed.sinks.set_greeting(sink, "421 4.3.2 Service not available, closing transmission channel")
    url, mta = bed.scenario(default={"retry_intervals": ["20s"], "max_age": "10m"})
    msgs = ids("dd", 100, "ok2.test")
    published = time.time()
    publish(url, "bulk", [make_message(i, r) for i, r in msgs.items()])
    while "destination unreachable" not in mta.log_text() and time.time() < published + 30:
        time.sleep(0.05)
    paused = time.time() - published
    tried = bed.sinks.connections().get(sink, 0)
    time.sleep(max(0.0, published + 15 - time.time()))
    tried_while_down = bed.sinks.connections().get(sink, 0)
    bed.sinks.set_greeting(sink, None)
    recovered = time.time()
    try:
        results = collect_results(url, msgs, timeout=300, settle=0.3)
    finally:
        mta.terminate()
    last = max(a.time for a in bed.sinks.accepted() if a.msg_id in msgs)
    attempts = [max(r.get("attempts", 0) for r in rs) for rs in results.values()]
    row("MX refuses for 15 s, then recovers", "paused after", "-", f"{paused:.1f} s, {tried} connection(s)")
    row("", "connections while paused (15 s)", "-", str(tried_while_down - tried))
    row("", "all delivered after recovery", "probe at 30 s", f"{last - recovered:.1f} s")
    row("", "messages with more than 1 attempt", "-", f"{sum(1 for a in attempts if a > 1)} of {len(msgs)}")


def isolation(bed: Bed) -> None:
    import random

    overrides = dict(domains={"ok1.test": {"max_message_rate": "5/s", "connection_limit": 2},
                              "ok2.test": {"max_message_rate": "50/s"}})
    url, mta = bed.scenario(**overrides)
    alone = ids("alone", 500, "ok2.test")
    run(bed, url, mta, alone)
    t_alone = sorted(a.time for a in bed.sinks.accepted() if a.msg_id in alone)
    url, mta = bed.scenario(**overrides)
    fast = ids("fast", 500, "ok2.test")
    bodies = [make_message(i, r) for i, r in ids("slow", 5000, "ok1.test").items()]
    for i, r in fast.items():
        bodies.insert(random.randrange(len(bodies) + 1), make_message(i, r))
    published = time.time()
    publish(url, "bulk", bodies)
    try:
        collect_results(url, fast, timeout=300, settle=0.3)
    finally:
        mta.terminate()
    t_fast = sorted(a.time for a in bed.sinks.accepted() if a.msg_id in fast)
    row("500 to a 50/s domain", "alone: first to last", f"{499 / 50:.2f} s", f"{t_alone[-1] - t_alone[0]:.2f} s")
    row("", "mixed into 5,000 for a 5/s domain", "within 10 %",
        f"{t_fast[-1] - t_fast[0]:.2f} s (first after {t_fast[0] - published:.2f} s)")


SCENARIOS = {"connections": connections, "rate": rate, "too-many": too_many, "rate-limited": rate_limited,
             "dead": dead, "isolation": isolation}


def main(names: list[str]) -> None:
    chosen = names or list(SCENARIOS)
    with Bed() as bed:
        print("| scenario | quantity | configured | observed at the sink |")
        print("|---|---|---|---|")
        for name in chosen:
            SCENARIOS[name](bed)


if __name__ == "__main__":
    main(sys.argv[1:])
