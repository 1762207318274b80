"""Which keys sign a message, and the worker pool that signs off the event loop."""

import asyncio
import base64
import time

import dkim
import orjson
import pytest

from mta.dkim.signature import generate, unstuff
from mta.intake.message import decode
from mta.dkim import signer as signer_module
from mta.dkim.signer import BATCH_DELAY, Keyring, Signer

RSA = generate("shop.test", "r1")
ED = generate("shop.test", "e1", "ed25519-sha256")
OTHER = generate("bounces.test", "b1", "ed25519-sha256")
KEYS = [RSA, ED, OTHER]
RECORDS = {f"{k.dns_name()}.".encode(): k.dns_txt().encode() for k in KEYS}


def job(sender="news@shop.test", envelope="bounces@bounces.test", n=0, body=b"hello\r\n", **extra):
    mime = f"From: <{sender}>\r\nTo: u@x.test\r\nSubject: n{n}\r\nMessage-ID: <{n}@t>\r\n\r\n".encode() + body
    doc = {"id": str(n), "recipient": "u@x.test", "envelope": envelope,
           "mime_b64": base64.b64encode(mime).decode(), **extra}
    return decode(orjson.dumps(doc), {}, "bulk", 0.0)


@pytest.mark.parametrize("kwargs, chosen", [
    ({}, (0, 1)),                                                        # From domain: dual signing
    ({"sender": "a@SHOP.test"}, (0, 1)),
    ({"sender": "a@nokey.test"}, (2,)),                                  # falls back to the envelope's domain
    ({"sender": "a@nokey.test", "envelope": "x@nokey.test"}, ()),        # nobody's key: unsigned
    ({"sender": "a@nokey.test", "envelope": ""}, ()),
    ({"dkim": False}, ()),
    ({"dkim": {"domain": "shop.test", "selector": "e1"}}, (1,)),
    ({"sender": "a@nokey.test", "dkim": {"domain": "Shop.Test", "selector": "r1"}}, (0,)),
])
def test_keyring_choice(kwargs, chosen):
    assert Keyring(KEYS).choose(job(**kwargs)) == chosen


# A key configured for faß.de signs the mail intake maps to xn--fa-hia.de (IDNA 2008,
# UTS #46 non-transitional), whichever form the From header, the envelope or the
# message's `dkim` field writes; under IDNA 2003 it would be fass.de, another domain.
IDN = generate("faß.de", "i1", "ed25519-sha256")


@pytest.mark.parametrize("kwargs", [
    {"sender": "news@xn--fa-hia.de"},
    {"sender": "news@faß.de"},
    {"sender": "news@FAß.de"},
    {"sender": "a@nokey.test", "envelope": "bounces@faß.de"},
    {"sender": "a@nokey.test", "envelope": "bounces@xn--fa-hia.de"},
    {"sender": "a@nokey.test", "dkim": {"domain": "faß.de", "selector": "i1"}},
    {"sender": "a@nokey.test", "dkim": {"domain": "xn--fa-hia.de", "selector": "i1"}},
])
def test_keyring_idn_key_matches_the_domain_intake_maps_to(kwargs):
    assert IDN.domain == "xn--fa-hia.de"
    assert Keyring([RSA, IDN]).choose(job(**kwargs)) == (1,)


def test_keyring_idn_key_is_not_the_idna_2003_domain():
    assert Keyring([RSA, IDN]).choose(job(sender="news@fass.de", envelope="b@fass.de")) == ()


def test_unconfigured_key_asked_for_is_a_bounce():
    reply = Keyring(KEYS).choose(job(dkim={"domain": "shop.test", "selector": "nope"}))
    assert reply.code == 554 and reply.enhanced == "5.7.0" and "not configured" in reply.text


def _verify(data: bytes) -> list[bool]:
    message = unstuff(data)
    checker = dkim.DKIM(message)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    return [checker.verify(i, dnsfunc=lambda name, timeout=5: RECORDS.get(name)) for i in range(count)]


def test_pool_signs_in_batches_and_routes_when_ready():
    async def scenario():
        ready, failed = [], []
        signer = Signer(KEYS, ready.append, lambda j, r: failed.append((j, r)), workers=1)
        try:
            jobs = [job(n=i, body=b".dot first\r\nline\r\n" * (i + 1)) for i in range(40)]
            unsigned = job(n=99, dkim=False)
            for j in jobs:
                signer.submit(j)
            signer.submit(unsigned)
            assert ready == [unsigned], "an unsigned job is routed at once, not after the batch"
            big = job(n=100, body=b"x" * 76 + b"\r\n" * 1)
            big.data = big.data + (b"y" * 998 + b"\r\n") * 3000  # about 3 MB: a batch of its own
            signer.submit(big)
            deadline = time.monotonic() + 60
            while len(ready) < 42 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return ready, failed, jobs, big
        finally:
            signer.close()

    ready, failed, jobs, big = asyncio.run(scenario())
    assert failed == []
    assert len(ready) == 42
    for j in jobs + [big]:
        assert j.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert _verify(j.data) == [True, True]


def test_light_traffic_waits_briefly_to_share_a_batch(monkeypatch):
    """Messages some milliseconds apart go to a worker together (each batch wakes a sleeping
    process, which costs more than an Ed25519 signature); the first waits BATCH_DELAY, no more."""
    delay = 0.5  # long enough that a loaded machine's loop iterations stay inside the window
    monkeypatch.setattr(signer_module, "BATCH_DELAY", delay)

    async def scenario():
        ready, sizes = [], []
        signer = Signer([ED], ready.append, lambda j, r: None, workers=2)
        send = signer.pool.send
        signer.pool.send = lambda number, now, items, done: sizes.append(len(items)) or send(number, now, items, done)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(4):
                signer.submit(job(n=i))
                await asyncio.sleep(0.01)  # loop iterations pass meanwhile, the window does not
            deadline = time.monotonic() + 60
            while len(ready) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return sizes, ready, loop.time() - started
        finally:
            signer.close()

    sizes, ready, took = asyncio.run(scenario())
    assert sizes == [4] and len(ready) == 4
    assert took >= delay
    assert 0 < BATCH_DELAY <= 0.05, "a delay mail does not notice"


def test_drain_gives_back_waiting_jobs_and_drops_late_signatures():
    async def scenario():
        ready = []
        signer = Signer(KEYS, ready.append, lambda j, r: None, workers=1)
        try:
            jobs = [job(n=i) for i in range(5)]
            for j in jobs[:3]:
                signer.submit(j)
            await asyncio.sleep(0)  # the scheduled flush sends these three to the worker
            for j in jobs[3:]:
                signer.submit(j)
            drained = signer.drain()  # three in flight, two not yet sent
            signer.submit(job(n=50))  # the one worker signs it after the drained batch
            deadline = time.monotonic() + 60
            while not ready and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return drained, jobs, ready
        finally:
            signer.close()

    drained, jobs, ready = asyncio.run(scenario())
    assert sorted(j.id for j in drained) == sorted(j.id for j in jobs)
    assert [j.id for j in ready] == ["50"]
    assert all(not j.data.startswith(b"DKIM-Signature") for j in jobs)


def test_over_long_line_bounces_and_a_dead_worker_loses_nothing():
    async def scenario():
        ready, failed = [], []
        signer = Signer(KEYS, ready.append, lambda j, r: failed.append((j.id, r)), workers=1)

        async def wait_for(n):
            deadline = time.monotonic() + 60
            while len(ready) + len(failed) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

        try:
            long = job(n=1)  # intake shortens long lines (mta.intake.longlines): this checks the signer's own guard
            long.data += b"y" * 999 + b"\r\n"
            signer.submit(long)
            signer.submit(job(n=2, body=b"y" * 998 + b"\r\n"))
            await wait_for(2)
            for worker in list(signer.pool.workers):
                worker.proc.kill()
                worker.proc.wait(10)
            signer.submit(job(n=3))  # its batch meets the dead pool
            await wait_for(3)
            signer.submit(job(n=4))  # and this one a new pool
            await wait_for(4)
            return ready, failed
        finally:
            signer.close()

    ready, failed = asyncio.run(scenario())
    replies = dict(failed)
    assert replies["1"].code == 554 and "999 octets" in replies["1"].text
    # job 3 met the dead pool: deferred (retried later) if its batch was sent before the pool
    # noticed, else signed by new workers; either way not lost, and job 4 is signed
    if "3" in replies:
        assert replies["3"].code == 451 and replies["3"].enhanced == "4.3.0", replies["3"]
        assert sorted(j.id for j in ready) == ["2", "4"]
    else:
        assert sorted(j.id for j in ready) == ["2", "3", "4"]
    assert all(_verify(j.data) == [True, True] for j in ready)


ORPHAN_SCRIPT = """
import asyncio, base64, os, signal
import orjson
from mta.dkim.signature import generate
from mta.intake.message import decode
from mta.dkim.signer import Signer

mime = b"From: <a@a.test>\\r\\nSubject: x\\r\\n\\r\\nbody\\r\\n"
job = decode(orjson.dumps({"recipient": "u@x.test", "envelope": "", "mime_b64": base64.b64encode(mime).decode()}),
             {}, "bulk", 0.0)

async def main():
    done = []
    signer = Signer([generate("a.test", "s", "ed25519-sha256")], done.append, print, workers=2)
    signer.submit(job)  # the workers are up and have their keys
    while not done:
        await asyncio.sleep(0.05)
    print(" ".join(str(w.proc.pid) for w in signer.pool.workers), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_workers_end_when_the_mta_is_killed(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(ORPHAN_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == -9, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


def test_load_keys_lists_every_problem(tmp_path):
    from mta.config import ConfigError, DkimKey
    from mta.dkim.signer import load_keys

    good = tmp_path / "good.pem"
    good.write_bytes(ED.pem())
    good.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_keys([DkimKey("shop.test", "e1", str(good), "ed25519-sha256"),
                   DkimKey("SHOP.test", "e1", str(good), "ed25519-sha256"),
                   DkimKey("shop.test", "s 1", str(good), "ed25519-sha256"),
                   DkimKey("shop.test", "e2", str(tmp_path / "absent.pem"), "ed25519-sha256")])
    assert info.value.problems == [
        "dkim[1]: domain SHOP.test with selector e1 is configured twice",
        "dkim[2].selector: 's 1' is not a DNS name",
        f"dkim[3].key_file: {tmp_path / 'absent.pem'}: cannot read: No such file or directory",
    ]
    keys, warnings = load_keys([DkimKey("Bücher.test", "e1", str(good), "ed25519-sha256")])
    assert keys[0].domain == "xn--bcher-kva.test" and warnings == []


def test_reload_new_keys_sign_new_batches_and_old_batches_finish():
    async def scenario():
        ready = []
        signer = Signer([RSA], ready.append, lambda j, r: None, workers=1)
        try:
            first = job(n=1)
            signer.submit(first)
            while signer.pool.workers[0].busy is None:  # sent to the worker with the old key
                await asyncio.sleep(0.001)
            old_workers = list(signer.pool.workers)
            signer.reload([ED, OTHER])
            second = job(n=2)
            signer.submit(second)
            deadline = time.monotonic() + 60
            while len(ready) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            while any(w.proc.poll() is None for w in old_workers) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return first, second, old_workers
        finally:
            signer.close()

    first, second, old_workers = asyncio.run(scenario())
    assert b"s=r1;" in first.data and b"s=e1;" not in first.data
    assert b"s=e1;" in second.data and b"s=r1;" not in second.data
    assert _verify(first.data) == [True] and _verify(second.data) == [True]
    # retired: the worker that signed the first batch ended once it had answered
    assert all(w.dead and w.proc.poll() is not None for w in old_workers)


def test_reload_chooses_again_for_jobs_not_yet_sent():
    async def scenario():
        ready = []
        signer = Signer([RSA, OTHER], ready.append, lambda j, r: None, workers=1)
        try:
            waiting, unsigned_now = job(n=1), job(n=2, sender="a@nokey.test")
            signer.submit(waiting)  # shop.test: the RSA key, index 0
            signer.submit(unsigned_now)  # bounces.test: OTHER, index 1, which the reload removes
            signer.reload([ED])  # index 0 is now shop.test's Ed25519 key
            deadline = time.monotonic() + 60
            while len(ready) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return waiting, unsigned_now, ready
        finally:
            signer.close()

    waiting, unsigned_now, ready = asyncio.run(scenario())
    assert ready[0] is unsigned_now and not unsigned_now.data.startswith(b"DKIM-Signature")
    assert b"s=e1;" in waiting.data and b"s=r1;" not in waiting.data and _verify(waiting.data) == [True]


def test_load_keys_maps_an_idn_key_domain_as_intake_does(tmp_path):
    from mta.config import DkimKey
    from mta.dkim.signer import load_keys

    good = tmp_path / "good.pem"
    good.write_bytes(ED.pem())
    good.chmod(0o600)
    keys, _ = load_keys([DkimKey("faß.de", "e1", str(good), "ed25519-sha256")])
    assert keys[0].domain == "xn--fa-hia.de"
