"""`mta pause/resume/reload` refuse what no MTA would accept and say plainly when the broker
is out of reach, before or without any MTA involved."""

from mta.cli import main


def test_a_pause_longer_than_30_days_is_refused_before_sending(capsys, monkeypatch):
    monkeypatch.setenv("MTA_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/")
    assert main(["pause", "x.test", "--for", "31d"]) == 2
    assert "--for: 31d is longer than 30 days" in capsys.readouterr().err


def test_an_unreachable_broker_is_an_error_message_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("MTA_BROKER_URL", "amqp://guest:s3cret@127.0.0.1:1/")
    assert main(["resume", "x.test"]) == 1
    err = capsys.readouterr().err
    assert "mta resume: cannot reach the broker at amqp://guest:***@127.0.0.1:1/" in err
    assert "s3cret" not in err


def test_check_warns_of_secret_files_others_may_read(tmp_path, capsys):
    password, key = tmp_path / "relay.pw", tmp_path / "control.key"
    password.write_text("pw\n")
    key.write_text("k\n")
    password.chmod(0o644)
    key.chmod(0o640)
    config = tmp_path / "mta.yaml"
    config.write_text(f"""\
control:
  key_file: {key}
routes:
  - sender_domain: customer.example
    smarthost: "[relay.customer.example]:587"
    username: mta
    password_file: {password}
""")
    assert main(["check", str(config)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{config}: warning: routes[0].password_file: {password} is accessible to group or other users "
                   "(mode 0644); chmod 600 it",
                   f"{config}: warning: control.key_file: {key} is accessible to group or other users "
                   "(mode 0640); chmod 600 it"]
    password.chmod(0o600)
    key.chmod(0o600)
    assert main(["check", str(config)]) == 0
    assert capsys.readouterr().err == ""
