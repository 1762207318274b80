"""`mta check` refuses an open relay before anything listens; `mta hash-password` prints a
hash the listeners accept, reading the password from stdin, never the command line."""

import io

import yaml

from mta.cli import main
from mta.submission.passwords import check_hash


def test_check_refuses_an_open_relay_with_the_key_path(tmp_path, capsys):
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump({"listeners": [{"address": "0.0.0.0:25", "tls": "none"}],
                                    "sources": {"anyone": {"auth": "none"}}}))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "sources.anyone.allow_ips: required with auth: none" in err


def test_check_refuses_a_listener_whose_certificate_does_not_load(tmp_path, capsys):
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump({
        "listeners": [{"address": "127.0.0.1:587", "tls": "starttls", "cert_file": str(tmp_path / "none.crt"),
                       "key_file": str(tmp_path / "none.key")}],
        "sources": {"p": {"auth": "none", "allow_ips": ["127.0.0.1"]}}}))
    assert main(["check", str(path)]) == 1
    assert "listeners 127.0.0.1:587: cannot load cert_file/key_file" in capsys.readouterr().err


def test_hash_password_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert main(["hash-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("$scrypt$") and check_hash(b"s3cret pass", printed)
    assert "s3cret" not in printed
