"""`mta status` with several nodes: the nodes seen and the totals per destination."""


def test_render_lists_the_nodes_and_each_destinations_totals() -> None:
    from mta.ops.status import _render_cluster

    def mta(node: str, store: str, connections: int) -> dict:
        seen = {"a": {"ago": 0, "lanes": ["single", "bulk"], "connections": 3},
                "b": {"ago": 1, "lanes": ["single", "bulk"], "connections": 2}}
        return {"cluster": {"node": node, "store": store, "live": 2, "nodes": seen},
                "destinations": [{"destination": "domain:x.test", "connections": connections, "in_flight": 1,
                                  "queued": 4, "limits": {"message_rate_now": 5.0}}]}

    text = "\n".join(_render_cluster([mta("a", "up", 3), mta("b", "down", 2)]))
    assert "cluster: 2 node(s) seen, 2 in the last minute; store DOWN for b" in text
    assert "seen 1s ago, lanes single, bulk, connections 2" in text
    assert "domain:x.test: connections 5, in flight 2, queued 8, rate now 10/s (on 2)" in text
    assert _render_cluster([{"cluster": None, "destinations": []}]) == []
