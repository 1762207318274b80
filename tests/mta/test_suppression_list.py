"""The suppression list: its keys, the in-memory index against a plain set, the SQLite store
(changes for other processes, audited removals, expiry) and `mta suppress`."""

import io
import random

import pytest

from mta.cli import main
from mta.suppression.index import Index
from mta.suppression.keys import key, normalize, parse_scope
from mta.suppression.store import Store, path_for


def test_addresses_keep_their_local_part_and_lower_their_domain():
    assert normalize(" Bob.Smith@Example.COM. ") == "Bob.Smith@example.com"
    assert key("global", "Bob@EXAMPLE.com") == key("global", "Bob@example.com") != key("global", "bob@example.com")
    assert key("global", "a@x.test") != key("source:webshop", "a@x.test")
    assert parse_scope("sender_domain:Shop.Example") == "sender_domain:shop.example"
    with pytest.raises(ValueError):
        parse_scope("planet:earth")
    with pytest.raises(ValueError):
        parse_scope("source")


def test_the_index_agrees_with_a_set_through_adds_removes_and_rebuilds(monkeypatch):
    import mta.suppression.index as index_module

    monkeypatch.setattr(index_module, "REBUILD_AFTER", 50)
    rng = random.Random(5)
    base = sorted({rng.getrandbits(63) * rng.choice((1, -1)) for _ in range(2000)})
    index, truth = Index(base), set(base)
    for _ in range(3000):
        k = rng.choice(base) if rng.random() < 0.5 else rng.getrandbits(63)
        if rng.random() < 0.5:
            index.add(k), truth.add(k)
        else:
            index.remove(k), truth.discard(k)
        probe = rng.choice(base + [k, rng.getrandbits(63)])
        assert (probe in index) == (probe in truth)
    assert len(index) == len(truth)


def test_keys_at_the_edges_of_every_stretch_are_found():
    edges = [-(1 << 63), -(1 << 63) + 1, -1, 0, 1, (1 << 63) - 1] + [b << 48 for b in (-2, -1, 1, 2)] + \
        [(b << 48) - 1 for b in (-1, 1, 2)]
    present = sorted(set(edges[::2]))
    index = Index(present)
    for k in edges:
        assert (k in index) == (k in present), k
    index.add(edges[1]), index.rebuild()
    assert edges[1] in index and len(index) == len(present) + 1


def test_the_store_keeps_changes_audits_removals_and_expires(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"))
    assert store.add([{"address": "a@x.test", "scope": "global", "reason": "hard_bounce", "message_id": "m1"},
                      {"address": "b@x.test", "scope": "source:shop", "reason": "complaint", "expires": 150.0}],
                     now=100.0) == 2
    assert store.add([{"address": "a@X.test", "scope": "global", "reason": "hard_bounce"}], now=101.0) == 0
    assert list(store.keys()) == sorted([key("global", "a@x.test"), key("source:shop", "b@x.test")])
    seen = store.last_change()
    assert store.remove("a@x.test", "global", "customer asked", now=120.0)["message_id"] is None  # replaced
    assert store.changes(seen) == [(seen + 1, key("global", "a@x.test"), 0)]
    assert store.expire(now=200.0) == 1
    assert store.find("b@x.test") == []
    assert [(r["address"], r["why"]) for r in store.removals()] == [("a@x.test", "customer asked"),
                                                                     ("b@x.test", "expired")]


def test_suppress_commands_round_trip_through_csv(tmp_path, monkeypatch, capsys):
    config = str(tmp_path / "mta.yaml")
    (tmp_path / "mta.yaml").write_text("{}\n")
    (tmp_path / "other.yaml").write_text("{}\n")
    assert main(["suppress", "add", "Gone@Example.com", "-c", config, "--reason", "hard_bounce"]) == 0
    assert main(["suppress", "check", "Gone@example.com", "-c", config]) == 0
    assert main(["suppress", "check", "gone@example.com", "-c", config]) == 1, "local parts keep their case"
    capsys.readouterr()
    assert main(["suppress", "export", "-c", config]) == 0
    exported = capsys.readouterr().out
    assert exported.startswith("address,scope,reason,since,message_id,expires\r\nGone@example.com,global,hard_bounce,")
    other = str(tmp_path / "other.yaml")
    monkeypatch.setattr("sys.stdin", io.StringIO(exported + "x@y.test,source:shop,complaint,1.0,,\r\n"))
    assert main(["suppress", "import", "-", "-c", other]) == 0
    assert [e["address"] for e in Store(path_for(other)).entries()] == ["Gone@example.com", "x@y.test"]
    monkeypatch.setattr("sys.stdin", io.StringIO("address\nnot-an-address\n"))
    assert main(["suppress", "import", "-", "-c", other]) == 1, "a bad file imports nothing"
    assert main(["suppress", "remove", "Gone@example.com", "-c", config, "--why", "asked on the phone"]) == 0
    assert Store(path_for(config)).removals()[0]["why"] == "asked on the phone"
    assert main(["suppress", "remove", "Gone@example.com", "-c", config]) == 1
