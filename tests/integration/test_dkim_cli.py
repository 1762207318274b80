"""`mta dkim-keygen`, and key files that stop `mta check` and `mta run` (naming the file, never the key)."""

import os
import re
import time

import dkim
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.test_cli import SPEC_EXAMPLE, mta

pytestmark = pytest.mark.timeout(60)


def _txt(stdout: str) -> str:
    """The record value from the zone-file line that dkim-keygen prints."""
    line = next(l for l in stdout.splitlines() if " IN TXT " in l)
    return "".join(re.findall(r'"([^"]*)"', line))


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_keygen_writes_a_key_whose_record_verifies(tmp_path, algorithm):
    key_file = tmp_path / "k.pem"
    proc = mta("dkim-keygen", "Example.COM", "s2026", "--algorithm", algorithm, "--key-file", str(key_file))
    assert proc.returncode == 0, proc.stderr
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert "s2026._domainkey.example.com. IN TXT (" in proc.stdout
    record = _txt(proc.stdout)
    assert record.startswith("v=DKIM1; k=rsa; p=" if algorithm == "rsa-sha256" else "v=DKIM1; k=ed25519; p=")
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', proc.stdout))
    # the printed configuration snippet is accepted as it stands, and signs verifiably
    snippet = yaml.safe_load(proc.stdout[proc.stdout.index("dkim:"):])
    config = tmp_path / "mta.yaml"
    config.write_text(yaml.safe_dump({"metrics": {"port": 0}, **snippet}))
    check = mta("check", str(config))
    assert check.returncode == 0 and check.stderr == "", (check.stdout, check.stderr)

    from mta.dkim.signature import load_key, sign_message

    key, warnings = load_key("example.com", "s2026", str(key_file), algorithm)
    assert warnings == []
    message = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = sign_message(message, [key], int(time.time())) + message
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record.encode())
    # never overwrites an existing key
    again = mta("dkim-keygen", "example.com", "s2026", "--key-file", str(key_file))
    assert again.returncode == 1 and "exists" in again.stderr


def test_keygen_refuses_short_rsa(tmp_path):
    proc = mta("dkim-keygen", "example.com", "s", "--bits", "1024", "--key-file", str(tmp_path / "k.pem"))
    assert proc.returncode == 2 and "2048" in proc.stderr
    assert not (tmp_path / "k.pem").exists()


def _config(tmp_path, key_file: str, algorithm: str = "rsa-sha256") -> str:
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump({
        "broker": {"url": "amqp://guest:guest@127.0.0.1:1/"}, "metrics": {"port": 0},
        "dkim": [{"domain": "sender.example", "selector": "s1", "key_file": key_file, "algorithm": algorithm}]}))
    return str(path)


def _short_key(tmp_path) -> tuple[str, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path = tmp_path / "short.pem"
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    return str(path), pem


@pytest.mark.parametrize("command", ["check", "run"])
def test_unusable_keys_stop_check_and_run(tmp_path, command):
    short, pem = _short_key(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nTm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n")
    cases = {
        str(tmp_path / "missing.pem"): "cannot read: No such file or directory",
        short: "RSA key of 1024 bits is too short (2048 at least)",
        str(garbage): "not a readable PEM private key",
    }
    for key_file, reason in cases.items():
        proc = mta(command, _config(tmp_path, key_file))
        assert proc.returncode == 1, (key_file, proc.stdout, proc.stderr)
        assert f"dkim[0].key_file: {key_file}: {reason}" in proc.stderr, proc.stderr
        body = b"".join(pem.splitlines()[1:-1]).decode()
        assert body[:40] not in proc.stderr and "Tm90IGEga2V5" not in proc.stderr
    # the spec example names a key file that exists on a production host only
    if command == "check" and not os.path.exists("/etc/mta/dkim/sender.example.pem"):
        proc = mta("check", SPEC_EXAMPLE)
        assert proc.returncode == 1
        assert "dkim[0].key_file: /etc/mta/dkim/sender.example.pem: cannot read" in proc.stderr


def test_key_readable_by_others_warns(tmp_path):
    key_file = tmp_path / "k.pem"
    assert mta("dkim-keygen", "sender.example", "s1", "--key-file", str(key_file)).returncode == 0
    os.chmod(key_file, 0o644)
    proc = mta("check", _config(tmp_path, str(key_file)))
    assert proc.returncode == 0, proc.stderr
    assert f"warning: dkim[0].key_file: {key_file}: private key is accessible to other users (mode 0644)" in proc.stderr


def test_algorithm_must_match_the_key(tmp_path):
    key_file = tmp_path / "k.pem"
    assert mta("dkim-keygen", "sender.example", "s1", "--algorithm", "ed25519-sha256",
               "--key-file", str(key_file)).returncode == 0
    proc = mta("check", _config(tmp_path, str(key_file)))
    assert proc.returncode == 1
    assert "holds a key for ed25519-sha256 but algorithm is rsa-sha256" in proc.stderr
    assert mta("check", _config(tmp_path, str(key_file), "ed25519-sha256")).returncode == 0
