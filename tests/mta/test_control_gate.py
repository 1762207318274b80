"""The control exchange's gate (mta.ops.control.Gate): with a key only fresh, unseen commands
carrying the key's HMAC are obeyed, the rest counted by reason; answers go only to
server-named queues; the key comes from the variable or file the config names."""

import os

import orjson
import pytest
from prometheus_client import generate_latest

from mta.ops import control
from mta.config import ConfigError, Control, parse_config

NOW = 1_800_000_000.0
KEY = b"k3y-for-tests"


def signed(body: dict, key: bytes = KEY) -> tuple[bytes, dict]:
    raw = orjson.dumps(body)
    return raw, {control.SIGNATURE: control.sign(key, raw)}


def pause(**extra) -> dict:
    return {"command": "pause", "target": "ok2.test", "id": "a1", "sent": NOW, **extra}


def test_a_signed_fresh_command_is_obeyed_once():
    gate = control.Gate(KEY)
    raw, headers = signed(pause())
    assert gate.admit(raw, headers, NOW + 5) == pause()
    assert gate.admit(raw, headers, NOW + 6) is None
    assert gate.refused["replayed"] == 1


@pytest.mark.parametrize("headers, reason", [
    (None, "unsigned"),
    ({}, "unsigned"),
    ({control.SIGNATURE: ""}, "unsigned"),
    ({control.SIGNATURE: control.sign(b"another key", orjson.dumps(pause()))}, "bad_signature"),
    ({control.SIGNATURE: "zz"}, "bad_signature"),
    ({control.SIGNATURE: "é" * 64}, "bad_signature"),
    ({control.SIGNATURE: b"\xff"}, "bad_signature"),
])
def test_unsigned_and_badly_signed_commands_are_refused_and_counted(headers, reason, caplog):
    gate = control.Gate(KEY)
    assert gate.admit(orjson.dumps(pause()), headers, NOW) is None
    assert gate.refused[reason] == 1 and sum(gate.refused.values()) == 1
    assert f"ignored a control message ({reason.replace('_', ' ')}" in caplog.text


def test_the_signature_covers_the_whole_body():
    gate = control.Gate(KEY)
    raw, headers = signed(pause())
    forged = raw.replace(b"ok2.test", b"ok3.test")
    assert gate.admit(forged, headers, NOW) is None and gate.refused["bad_signature"] == 1


@pytest.mark.parametrize("sent", [NOW - 61, NOW + 61])
def test_a_command_sent_more_than_a_minute_away_is_stale(sent):
    gate = control.Gate(KEY)
    assert gate.admit(*signed(pause(sent=sent)), NOW) is None
    assert gate.refused["stale"] == 1
    assert gate.admit(*signed(pause(sent=NOW - 59, id="b")), NOW) is not None


@pytest.mark.parametrize("body", [pause(sent="now"), pause(id=None), {"command": "pause", "target": "x"},
                                  {"command": "explode", "id": "c", "sent": NOW}, [1, 2]])
def test_signed_but_malformed_commands_are_refused(body):
    gate = control.Gate(KEY)
    assert gate.admit(*signed(body), NOW) is None
    assert gate.refused["malformed"] == 1


def test_ids_are_forgotten_once_they_can_no_longer_pass_the_freshness_test():
    gate = control.Gate(KEY)
    for i in range(100):
        assert gate.admit(*signed(pause(id=f"n{i}", sent=NOW + i)), NOW + i) is not None
    assert len(gate._seen) == 100
    gate.admit(*signed(pause(id="late", sent=NOW + 1000)), NOW + 1000)
    assert list(gate._seen) == ["late"]


def test_without_a_key_any_well_formed_command_is_obeyed():
    gate = control.Gate(None)
    assert gate.admit(b'{"command": "resume", "target": "x.test"}', None, NOW) == {"command": "resume",
                                                                                 "target": "x.test"}
    assert gate.admit(b"not json", None, NOW) is None and gate.refused["malformed"] == 1


def test_refusals_are_logged_at_most_once_a_minute_per_reason(caplog):
    gate = control.Gate(KEY)
    for t in range(120):
        gate.admit(b"{}", None, NOW + t / 2)
    assert gate.refused["unsigned"] == 120
    assert caplog.text.count("ignored a control message (unsigned)") == 1
    gate.admit(b"{}", None, NOW + 60)
    assert "121 refused for this reason since start" in caplog.text


@pytest.mark.parametrize("reply_to, answered", [
    ("amq.gen-Xq3PIn5y0j2hLkVbDwkvlQ", True), ("mta.single", False), ("mta.results", False),
    ("", False), (17, False), (None, False)])
def test_answers_go_only_to_server_named_queues(reply_to, answered):
    gate = control.Gate(None)
    assert (gate.reply_queue({"command": "status", "reply_to": reply_to}, NOW) is not None) is answered
    assert gate.refused["reply_to"] == (0 if answered or reply_to is None else 1)


def test_the_key_comes_from_the_variable_or_the_file(tmp_path):
    assert control.load_key(Control(), {}) is None
    assert control.load_key(Control(key_env="MTA_CONTROL_KEY"), {"MTA_CONTROL_KEY": "s3cret"}) == b"s3cret"
    with pytest.raises(ConfigError, match="control.key_env: environment variable MTA_CONTROL_KEY is not set"):
        control.load_key(Control(key_env="MTA_CONTROL_KEY"), {})
    key_file = tmp_path / "control.key"
    key_file.write_bytes(b"s3cret-from-a-file\n")
    assert control.load_key(Control(key_file=str(key_file)), {}) == b"s3cret-from-a-file"
    with pytest.raises(ConfigError, match="control.key_file: cannot read"):
        control.load_key(Control(key_file=str(tmp_path / "missing")), {})
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        control.load_key(Control(key_file=str(tmp_path / "empty")), {})


def test_the_control_section_of_the_rules_file():
    assert parse_config({"control": {"key_env": "MTA_CONTROL_KEY"}}).control == Control(key_env="MTA_CONTROL_KEY")
    with pytest.raises(ConfigError) as caught:
        parse_config({"control": {"key_env": "A", "key_file": "/k", "key": "inline"}})
    assert caught.value.problems == ["control.key: unknown key", "control: give key_env or key_file, not both"]


def test_secret_files_readable_by_group_or_others_are_named_with_their_mode(tmp_path):
    password, key = tmp_path / "relay.pw", tmp_path / "control.key"
    password.write_text("pw")
    key.write_text("key")
    os.chmod(password, 0o640)
    os.chmod(key, 0o604)
    config = parse_config({"control": {"key_file": str(key)},
                           "routes": [{"sender_domain": "a.example", "smarthost": "[relay.example]:587",
                                       "username": "u", "password_file": str(password)}]})
    assert control.secret_file_warnings(config) == [
        f"routes[0].password_file: {password} is accessible to group or other users (mode 0640); chmod 600 it",
        f"control.key_file: {key} is accessible to group or other users (mode 0604); chmod 600 it"]
    os.chmod(password, 0o600)
    os.chmod(key, 0o400)
    assert control.secret_file_warnings(config) == []


def test_refusals_are_a_metric():
    from tests.fakes import FakeEngine
    from mta.ops.metrics import Metrics

    engine = FakeEngine(parse_config({}))
    engine.control_gate = control.Gate(KEY)
    engine.control_gate.admit(b"{}", None, NOW)
    engine.metrics = Metrics(engine, clock=lambda: NOW)
    text = generate_latest(engine.metrics.registry).decode()
    assert 'mta_control_refused_total{reason="unsigned"} 1.0' in text
    assert 'mta_control_refused_total{reason="stale"} 0.0' in text


@pytest.mark.parametrize("key", [KEY, None])
def test_a_control_body_over_64_kib_is_refused_unread(key, monkeypatch):
    body = orjson.dumps(pause(pad="x" * (64 * 1024)))
    headers = {control.SIGNATURE: control.sign(KEY, body)}

    def unread(*args):
        raise AssertionError("a body that large was read")

    monkeypatch.setattr(control, "sign", unread)
    monkeypatch.setattr(control.orjson, "loads", unread)
    gate = control.Gate(key)
    assert gate.admit(body, headers, NOW) is None
    assert gate.refused["too_large"] == 1


@pytest.mark.parametrize("command", ["pause", "resume", "reload", "status"])
@pytest.mark.parametrize("until", ["soon", [1], True, {"at": 1}])
def test_an_end_that_is_no_time_is_refused_for_every_command(command, until):
    gate = control.Gate(KEY)
    assert gate.admit(*signed(pause(command=command, until=until)), NOW) is None
    assert gate.refused["malformed"] == 1


@pytest.mark.parametrize("until", [None, NOW + 60, int(NOW) + 60])
def test_an_end_that_is_a_time_passes_the_gate(until):
    assert control.Gate(KEY).admit(*signed(pause(command="resume", until=until)), NOW) is not None
