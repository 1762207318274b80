"""`mta run --processes N`: what each child is, and when N is refused."""

from mta.config import parse_config
from mta.processes import for_child, refusal


def test_several_processes_need_a_store() -> None:
    alone = parse_config({})
    assert "needs cluster.store" in refusal(alone, 2)
    assert refusal(alone, 1) is None
    assert refusal(alone, 0) == "--processes must be at least 1"
    assert refusal(parse_config({"cluster": {"store": "redis://127.0.0.1:6379/0"}}), 4) is None


def test_each_child_is_a_node_with_its_own_port_and_journal() -> None:
    config = parse_config({"cluster": {"store": "redis://127.0.0.1:6379/0", "node": "mta-a"},
                           "metrics": {"port": 9200}})
    child = for_child(config, 2, "/etc/mta/rules.yaml")
    assert child.cluster.node == "mta-a-2"
    assert child.metrics.port == 9202
    assert child.broker.journal == "rules.yaml.outcomes.2"  # relative: beside the rules file
    assert for_child(parse_config({"broker": {"journal": ""}, "metrics": {"port": 0}}), 1, "r.yaml").broker.journal == ""
    assert for_child(parse_config({"metrics": {"port": 0}}), 1, "r.yaml").metrics.port == 0
