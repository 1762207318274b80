"""1,000 failed logins from one address cost that address, not the others (SPEC §7): after
its budget it is refused at once, without its passwords being checked, while the source's
application, logging in from its own address, goes on submitting."""

import base64
import smtplib
import ssl
import threading
import time

import pytest

from tests.testbed.amqp import collect_results
from tests.testbed.checks import run_id
from tests.testbed.submit import (ENV, PASSWORD, client_context, message, queued_id, starttls_client, submit,
                                  submission_overrides)

ATTACKER = "127.0.0.5"
ATTEMPTS = 1000


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _guess(port: int, context: ssl.SSLContext, left: list, codes: list, lock: threading.Lock) -> None:
    """Keep logging in with wrong passwords, a new connection whenever one is closed."""
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, source_address=(ATTACKER, 0), timeout=30) as client:
                client.ehlo("guesser.test")
                client.starttls(context=context)
                client.ehlo("guesser.test")
                while True:
                    with lock:
                        if not left:
                            return
                        n = left.pop()
                    code, _ = client.docmd("AUTH", "PLAIN " + _plain("webshop", f"guess{n}"))
                    with lock:
                        codes.append(code)
                    if code == 421:
                        break
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            continue


@pytest.mark.timeout(240)
def test_a_thousand_failed_logins_cost_that_address_only(vhost, sinks, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca, allow_ips=["127.0.0.0/8"])
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    left, codes, lock = list(range(ATTEMPTS)), [], threading.Lock()
    context = client_context(test_ca)
    started = time.monotonic()
    threads = [threading.Thread(target=_guess, args=(ports.starttls, context, left, codes, lock)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    took = time.monotonic() - started
    assert len(codes) == ATTEMPTS
    checked = codes.count(535)
    assert 1 <= checked <= 12, f"about the budget of 10 passwords were checked, not {checked}"
    assert codes.count(421) == ATTEMPTS - checked, {c: codes.count(c) for c in set(codes)}
    assert took < 120, took

    # the attacker's address now is refused even with the right password...
    with starttls_client(test_ca, ports.starttls, source_address=ATTACKER, login=False) as client:
        code, text = client.docmd("AUTH", "PLAIN " + _plain("webshop", PASSWORD))
        assert code == 421 and b"4.7.0" in text, text
    # ... while the application on its own address logs in and submits as before
    with starttls_client(test_ca, ports.starttls) as client:
        data = message(f"after-{run}", to=f"after-{run}@ok1.test")
        code, text = submit(client, "orders@shop.test", [f"after-{run}@ok1.test"], data)
        assert code == 250, text
    sid = queued_id(text)
    results = collect_results(vhost, [sid], timeout=60, settle=1.0)
    assert [r["status"] for r in results[sid]] == ["delivered"], results[sid]
