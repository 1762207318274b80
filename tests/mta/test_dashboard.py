"""grafana/ is a provisioning directory a stock Grafana can mount, and every query of the
dashboard uses only metrics the MTA exports (SPEC §4). That the queries return data
against a real run is tests/integration/test_metrics_prometheus.py's job."""

import json
import os
import re

import yaml

from mta.ops.metrics import Metrics
from tests.fakes import FakeEngine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRAFANA = os.path.join(ROOT, "grafana")


def _engine() -> FakeEngine:
    """An engine with listeners (SPEC §7) and an inbound one (§8), so the submission and
    inbound metrics are exported too."""
    from types import SimpleNamespace

    from mta.config import Inbound
    from mta.inbound.receiver import Receiver
    from mta.inbound.server import Reports
    from mta.submission.stats import Stats

    engine = FakeEngine()
    engine.tracking = SimpleNamespace(stuck=0)  # the event store's tracker (SPEC §9)
    receiver = Receiver(None, None, None, lambda: 1000.0)
    engine.listeners = SimpleNamespace(stats=Stats(lambda: 1000.0, ["webshop"]),
                                       submitter=SimpleNamespace(unavailable=lambda: None), receiver=receiver,
                                       reports=[Reports(Inbound("127.0.0.1", 2525, ("bounces.example",)), receiver)])
    return engine


def exported_names() -> set[str]:
    metrics = Metrics(_engine(), clock=lambda: 1000.0)
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def dashboard() -> dict:
    with open(os.path.join(GRAFANA, "dashboards", "mta.json")) as fh:
        return json.load(fh)


def test_every_query_uses_exported_metrics_only():
    exported = exported_names()
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        used = set(re.findall(r"\bmta_[a-z_]+", expr))
        assert used, expr
        assert used <= exported, f"{expr}: {used - exported} not exported"
    names = {family.name for family in Metrics(FakeEngine()).registry.collect()}
    assert all(name.startswith("mta_") for name in names)


def test_every_panel_is_described_and_in_a_row():
    panels = dashboard()["panels"]
    assert panels[0]["type"] == "row"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Throughput", "Latency", "Destinations", "Connections and limits", "DNS and broker",
                    "SMTP submission (sources)", "Suppression and late reports"]
    for panel in panels:
        assert panel.get("description"), panel["title"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def test_provisioning_files_point_at_the_mounted_directory():
    with open(os.path.join(GRAFANA, "dashboards", "provider.yml")) as fh:
        provider = yaml.safe_load(fh)
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    with open(os.path.join(GRAFANA, "datasources", "prometheus.yml")) as fh:
        datasource = yaml.safe_load(fh)["datasources"][0]
    assert datasource["type"] == "prometheus"
    with open(os.path.join(ROOT, "docker-compose.yml")) as fh:
        compose = yaml.safe_load(fh)
    assert "./grafana:/etc/grafana/provisioning:ro" in compose["services"]["grafana"]["volumes"]
    assert set(compose["services"]) == {"rabbitmq", "mta", "prometheus", "grafana"}


def test_readme_documents_every_metric_with_its_type():
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    rows = dict(re.findall(r"^\| `(mta_[a-z_]+)` \| (counter|gauge|histogram) \|", readme, re.MULTILINE))
    families = {}
    for family in Metrics(_engine()).registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = family.type
        assert family.documentation, f"{name} has no HELP text"
    assert rows == families
