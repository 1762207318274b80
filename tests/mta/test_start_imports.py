"""What `mta run` loads decides part of its CPU: every start imports it (a tenth of a second
per large library, more where bytecode is not cached), and a benchmark of 20,000 messages
counts it. A node without a shared store does not load redis-py, one without DKIM keys
does not load the signer and its cryptography, and prometheus_client waits for the metrics
endpoint (or another reader of the registry); a node with them does, when it builds them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mta

ROOT = Path(mta.__file__).parent.parent

LOADED = """
import sys
import mta.cli
from mta.config import parse_config
from mta.engine import Engine

engine = Engine(parse_config(RULES))
print(sorted({name.split(".")[0] for name in sys.modules} & {"redis", "cryptography", "dkim", "prometheus_client"}))
print(sorted(name for name in sys.modules if name.startswith(("mta.dkim", "mta.cluster"))))
engine.metrics.registry if READ_REGISTRY else None
print(sorted({name.split(".")[0] for name in sys.modules} & {"prometheus_client"}))
"""


def _loaded(rules: dict, read_registry: bool = False) -> list[str]:
    program = LOADED.replace("RULES", repr(rules)).replace("READ_REGISTRY", repr(read_registry))
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_an_engine_without_store_or_keys_loads_neither_redis_nor_cryptography() -> None:
    libraries, modules, _ = _loaded({})
    assert libraries == "[]"
    assert "mta.cluster.cluster" not in modules and "mta.dkim.signer" not in modules


def test_the_metrics_registry_is_built_by_its_first_reader() -> None:
    assert _loaded({}, read_registry=True)[2] == "['prometheus_client']"


def test_an_engine_with_a_store_loads_the_cluster_and_redis() -> None:
    libraries, modules, _ = _loaded({"cluster": {"store": "redis://127.0.0.1:1/0"}})
    assert "redis" in libraries
    assert "mta.cluster.cluster" in modules and "mta.cluster.store" in modules
