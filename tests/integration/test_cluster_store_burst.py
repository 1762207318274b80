"""A burst of calls to the shared store (SPEC §6) against a real Redis: more calls at once
than the client has connections wait for one, within the call's timeout; none counts as the
store being down. (Node b of test_cluster_failures looks up a whole redelivered prefetch
window at once: a refused lookup there sends a message again.)"""

import asyncio

from mta.cluster.store import Store


def test_more_calls_at_once_than_connections_all_answer(redis_url):
    async def run() -> list:
        store = Store(redis_url)
        try:
            return await asyncio.gather(*(store.call(store.client.get, f"burst-{i}") for i in range(200)),
                                        return_exceptions=True), store.up
        finally:
            await store.client.aclose()

    answers, up = asyncio.run(run())
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert not failed and up, failed[:3]
