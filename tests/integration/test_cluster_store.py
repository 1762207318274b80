"""The shared store's parts against a real Redis: leases, rates, heartbeats, the record of
outcomes, and what a node does while the store is gone."""

from __future__ import annotations

import asyncio

import pytest

from mta.cluster.cluster import Cluster
from mta.cluster.leases import share
from mta.cluster.store import PREFIX
from tests.testbed.redisd import RedisServer


def run(coro):
    return asyncio.run(coro)


async def _nodes(url: str, n: int) -> list[Cluster]:
    nodes = [Cluster(url, f"node-{i}") for i in range(n)]
    for node in nodes:
        await node.start()
    for node in nodes:  # every node has seen every other
        await node.nodes.beat()
    return nodes


async def _close(nodes) -> None:
    for node in nodes:
        await node.close()


def test_leases_hold_a_limit_across_nodes_and_come_back_on_release(redis_url):
    async def main():
        a, b, c = await _nodes(redis_url, 3)
        held = []
        for node in (a, b, c, a, b, c, a):
            lease = await node.leases.acquire([("domain:x.test", 5)])
            held.append((node, lease))
        granted = [(n, l) for n, l in held if l is not None]
        assert len(granted) == 5 and [l for _, l in held[5:]] == [None, None]
        node, lease = granted[0]
        node.leases.release(lease)
        await node.leases.released()
        assert await c.leases.acquire([("domain:x.test", 5)]) is not None
        assert await a.leases.acquire([("domain:x.test", 5)]) is None
        await _close((a, b, c))
    run(main())


def test_a_lease_counts_against_every_key_or_none(redis_url):
    async def main():
        a, b = await _nodes(redis_url, 2)
        assert await a.leases.acquire([("provider:p", 2)]) is not None
        assert await b.leases.acquire([("domain:one.test", 5), ("provider:p", 2)]) is not None
        # the provider is full: the domain's lease is not taken either
        assert await b.leases.acquire([("domain:one.test", 5), ("provider:p", 2)]) is None
        counts = await a.store.call(a.store.client.zcard, PREFIX + "lease:domain:one.test")
        assert counts == 1
        await _close((a, b))
    run(main())


def test_heartbeats_count_the_nodes(redis_url):
    async def main():
        nodes = await _nodes(redis_url, 3)
        assert [n.nodes.live() for n in nodes] == [3, 3, 3]
        assert set(nodes[0].nodes.seen) == {"node-0", "node-1", "node-2"}
        await nodes[2].close()
        await nodes[0].nodes.beat()
        assert nodes[0].nodes.live() == 2
        await _close(nodes[:2])
    run(main())


def test_a_shared_rate_holds_across_nodes(redis_url):
    """Three nodes taking slots of one 50/s rate as fast as they can: in every 1 s window
    of the times they were given, at most 50 + burst - 1."""
    async def main():
        nodes = await _nodes(redis_url, 3)
        loop = asyncio.get_running_loop()
        times: list[float] = []
        end = loop.time() + 2.5

        async def taker(node):
            while loop.time() < end:
                at = await node.rates.slot("domain:r.test", 50.0, 2)
                await asyncio.sleep(max(0.0, at - loop.time()))
                times.append(loop.time())

        await asyncio.gather(*(taker(n) for n in nodes for _ in range(2)))
        times.sort()
        worst = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
        span = times[-1] - times[0]
        assert 50 * 2.5 * 0.8 <= len(times) <= 50 * span + 2 + 1, (len(times), span)
        assert worst <= 50 + 1 + 1, worst  # burst 2, plus one slot of timer lateness
        await _close(nodes)
    run(main())


def test_the_record_of_outcomes_is_seen_by_another_node(redis_url):
    async def main():
        a, b = await _nodes(redis_url, 2)
        ra, rb = a.keep_record(None), b.keep_record(None)
        ra.final("m1\0x@y.test\x0012", "delivered", b'{"status":"delivered"}')
        ra.final("m2\0x@y.test\x0012", "bounced", b'{"status":"bounced"}')
        ra.published("m2\0x@y.test\x0012")
        await ra.flush()
        assert await rb.recall("m1\0x@y.test\x0012") == (b'{"status":"delivered"}', "delivered", False)
        assert await rb.recall("m2\0x@y.test\x0012") == (None, "", True)
        assert await rb.recall("m3\0x@y.test\x0012") is None
        await _close((a, b))
    run(main())


def test_store_down_falls_back_to_a_share_and_rejoins():
    server = RedisServer()
    server.start()
    try:
        async def main():
            a, b = await _nodes(server.url, 2)
            server.kill()
            # limit 5 over 2 nodes: 2 each, never the whole
            got = [await a.leases.acquire([("domain:d.test", 5)]) for _ in range(4)]
            assert [g is not None for g in got] == [True, True, False, False]
            assert not a.up
            assert share(5, 2) == 2 and share(1, 3) == 1
            # the rate: a share of 40/s over 2 nodes is 20/s
            loop = asyncio.get_running_loop()
            slots = [await a.rates.slot("domain:d.test", 40.0) for _ in range(21)]
            assert slots[-1] - slots[0] == pytest.approx(1.0, abs=0.01)
            server.start()
            await a.nodes.beat()  # the heartbeat notices the store is back
            assert a.up
            await a.leases.renew()  # and writes the leases held meanwhile
            count = await a.store.call(a.store.client.zcard, PREFIX + "lease:domain:d.test")
            assert count == 2
            del loop
            await _close((a, b))
        run(main())
    finally:
        server.remove()


def test_what_one_node_learns_reaches_the_others(redis_url):
    from mta.cluster.shared import SharedState
    import time as _time

    async def main():
        heard_b: list = []
        heard_c: list = []
        a = SharedState(Cluster(redis_url, "a").store, "a", lambda *f: None, _time.time, asyncio.sleep)
        b = SharedState(Cluster(redis_url, "b").store, "b", lambda *f: heard_b.append(f), _time.time, asyncio.sleep)
        tasks = [asyncio.create_task(x.run()) for x in (a, b)]
        await b.listening.wait()
        until = _time.time() + 60
        a.tell("domain:x.test", "pause", {"until": until, "reason": "dead"})
        a.tell("domain:y.test", "window", {"until": until, "connections": 2})
        a.tell("domain:z.test", "pause", {"until": _time.time() - 1, "reason": "over"})
        deadline = _time.monotonic() + 2
        while len(heard_b) < 2 and _time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert heard_b == [("domain:x.test", "pause", {"until": until, "reason": "dead"}),
                           ("domain:y.test", "window", {"until": until, "connections": 2})]
        # a node that starts later reads what is in force, not what ended
        c = SharedState(Cluster(redis_url, "c").store, "c", lambda *f: heard_c.append(f), _time.time, asyncio.sleep)
        await c.load()
        assert sorted(heard_c) == sorted(heard_b)
        a.tell("domain:x.test", "pause", None)  # it ended
        deadline = _time.monotonic() + 2
        while len(heard_b) < 3 and _time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert heard_b[2] == ("domain:x.test", "pause", None)
        for t in tasks:
            t.cancel()
    run(main())


def test_a_node_that_starts_without_the_store_divides_by_the_nodes_it_saw_last(redis_url, tmp_path):
    remembered = str(tmp_path / "rules.yaml.nodes")

    async def main():
        a = Cluster(redis_url, "a", remember=remembered)
        b, c = Cluster(redis_url, "b"), Cluster(redis_url, "c")
        for node in (b, c, a):
            await node.start()
        assert a.nodes.live() == 3
        await _close((a, b, c))
        later = Cluster("redis://127.0.0.1:1/0", "a", remember=remembered)  # nothing answers there
        await later.start()
        assert not later.up and later.nodes.live() == 3
        assert await later.leases.acquire([("domain:x.test", 9)]) is not None
        assert [await later.leases.acquire([("domain:x.test", 9)]) is not None for _ in range(3)] == [
            True, True, False]  # 9 // 3
        await later.close()
        assert Cluster("redis://127.0.0.1:1/0", "p-0", at_least=4).nodes.live() == 4  # --processes 4
    run(main())


def test_a_store_that_lost_the_pauses_gets_them_back_instead_of_resuming_them(redis_url, tmp_path):
    from mta.ops.kept import KeptPauses
    from tests.fakes import FakeEngine

    async def main():
        node = Cluster(redis_url, "a")
        engine = FakeEngine()
        kept = KeptPauses(engine, str(tmp_path / "rules.yaml.pauses"), node.store)
        kept.write_file({"ok2.test": None})
        assert await kept.load() == {"ok2.test": None}  # the store had none on record: the file's
        assert await kept.read_store() == {"ok2.test": None}  # ... and now the store has them
        await node.store.call(node.store.client.flushall)  # a restart without persistence
        assert await kept.read_store() is None  # lost, not "no pauses"
        await node.store.call(node.store.client.hset, "mta:pauses", mapping={"x.test": b"{bad", "\0written": b"1"})
        assert await kept.read_store() == {}  # a value no node wrote is skipped
        await node.close()
    run(main())
