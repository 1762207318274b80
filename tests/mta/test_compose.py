"""The demo compose file publishes its services on loopback only: its credentials are
public (mta/mta, anonymous Grafana), so a port open on every interface is an open broker."""

import os

import yaml

COMPOSE = os.path.join(os.path.dirname(__file__), "..", "..", "docker-compose.yml")


def test_every_published_port_is_bound_to_loopback():
    with open(COMPOSE) as fh:
        services = yaml.safe_load(fh)["services"]
    published = {(name, port) for name, service in services.items() for port in service.get("ports", [])}
    assert {name for name, _ in published} >= {"rabbitmq"}
    assert {p for _, p in published if str(p).startswith("127.0.0.1:")} == {p for _, p in published}, published
    assert {p for n, p in published if n == "rabbitmq"} == {"127.0.0.1:5672:5672", "127.0.0.1:15672:15672"}
