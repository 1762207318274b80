"""Bad payloads go to `mta.invalid` unchanged (reason in `x-mta-error`), each yields one
`invalid` result, none causes SMTP, and the consumer keeps going."""

import base64
import collections
import json
import random

import pytest

from tests.testbed.amqp import ResultCollector, drain_queue, make_message, make_mime, publish
from tests.testbed.checks import assert_each_final, run_id

SEED = 20240501
N_RANDOM = 200


def _named_cases(run):
    """(id or None, body) of hand-written invalid payloads."""
    mime = make_mime("x", "user@ok1.test")

    def j(i, **doc):
        return i, json.dumps({"id": i, **doc}).encode()

    cases = [
        (None, b"this is not JSON {"),
        (None, b""),
        (None, "\u00e9t\u00e9 not json".encode("latin-1")),
        j(f"inv-{run}-norcpt", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-noenv", recipient="user@ok1.test", mime=mime),
        j(f"inv-{run}-both", recipient="user@ok1.test", envelope="s@sender.test", mime=mime,
          mime_b64=base64.b64encode(mime.encode()).decode()),
        j(f"inv-{run}-neither", recipient="user@ok1.test", envelope="s@sender.test"),
        j(f"inv-{run}-crlf", recipient="user@ok1.test\r\nRCPT TO:<evil@ok1.test>",
          envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-lf", recipient="user@ok1.test\nX", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-envcrlf", recipient="user@ok1.test", envelope="s@sender.test\r\nDATA",
          mime=mime),
        j(f"inv-{run}-nul", recipient="us\u0000er@ok1.test", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-noat", recipient="not-an-address", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-nolocal", recipient="@ok1.test", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-nodomain", recipient="user@", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-space", recipient="a b@ok1.test", envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-longlocal", recipient="a" * 65 + "@ok1.test", envelope="s@sender.test",
          mime=mime),
        j(f"inv-{run}-rcptint", recipient=12345, envelope="s@sender.test", mime=mime),
        j(f"inv-{run}-rcptlist", recipient=["user@ok1.test"], envelope="s@sender.test",
          mime=mime),
        j(f"inv-{run}-mimenum", recipient="user@ok1.test", envelope="s@sender.test", mime=42),
        j(f"inv-{run}-badb64", recipient="user@ok1.test", envelope="s@sender.test",
          mime_b64="***not base64***"),
        (None, b"[1, 2, 3]"),
        (None, b"\"just a string\""),
        (None, b"null"),
    ]
    return cases


def _random_cases(run, n=N_RANDOM, seed=SEED):
    """Seeded garbage that can never be a valid message."""
    rng = random.Random(seed)
    mime = "Subject: x\r\n\r\nbody\r\n"
    out = []

    def rnd_text(k):
        return "".join(rng.choice("abc@.\r\n\t \u00e9\u4e2d\"{}<>:\\\x00") for _ in range(k))

    def rnd_json(depth=0):
        kind = rng.randrange(7 if depth < 3 else 4)
        if kind == 0:
            return rng.randint(-10**6, 10**6)
        if kind == 1:
            return rnd_text(rng.randrange(0, 20))
        if kind == 2:
            return rng.choice([None, True, False, 1.5])
        if kind == 3:
            return rng.random()
        if kind in (4, 5):
            return [rnd_json(depth + 1) for _ in range(rng.randrange(0, 4))]
        return {rnd_text(rng.randrange(1, 8)): rnd_json(depth + 1) for _ in range(rng.randrange(0, 4))}

    for k in range(n):
        kind = k % 5
        i = f"rnd-{run}-{k}"
        if kind == 0:          # random bytes
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            try:                                  # keep only what is not a JSON object
                if isinstance(json.loads(body), dict):
                    body = b"\xff" + body
            except (ValueError, UnicodeDecodeError):
                pass
            out.append((None, body))
        elif kind == 1:        # random JSON that is not an object
            value = rnd_json()
            if isinstance(value, dict):
                value = [value]
            out.append((None, json.dumps(value).encode()))
        elif kind == 2:        # object with an id but none of the required fields
            doc = {"id": i}
            doc.update({"x" + rnd_text(3): rnd_json(1) for _ in range(rng.randrange(0, 4))})
            out.append((i, json.dumps(doc).encode()))
        elif kind == 3:        # required fields present, recipient of a wrong type
            doc = {"id": i, "recipient": rng.choice([rng.randint(0, 9), None, [], {}, True]),
                   "envelope": "s@sender.test", "mime": mime}
            out.append((i, json.dumps(doc).encode()))
        else:                  # recipient with garbage in it (CR, LF, NUL, no @, ...)
            local = rnd_text(rng.randrange(1, 10))
            bad = rng.choice([f"{local}\r\n@ok1.test", f"{local}\n@ok1.test",
                              f"a\x00{local}@ok1.test", local.replace("@", "") + "ok1.test",
                              f"a@b@{local}", f"<{local}@ok1.test", "x" * 300 + "@ok1.test"])
            doc = {"id": i, "recipient": bad, "envelope": "s@sender.test", "mime": mime}
            out.append((i, json.dumps(doc).encode()))
    return out


@pytest.mark.timeout(240)
def test_invalid_payloads(vhost, sinks, start_mta):
    mta = start_mta()
    run = run_id()
    cases = _named_cases(run) + _random_cases(run)
    bodies = [b for _, b in cases]
    known_ids = [i for i, _ in cases if i is not None]
    half = len(bodies) // 2
    publish(vhost, "single", bodies[:half])
    publish(vhost, "bulk", bodies[half:])

    coll = ResultCollector(vhost)
    coll.collect(known_ids, timeout=120, settle=1.0,
                 until=lambda c: c.count("invalid") >= len(bodies))
    assert mta.alive(), "the MTA must survive bad input"

    # one `invalid` result per bad payload, one per known id
    assert coll.count("invalid") == len(bodies), (coll.count("invalid"), len(bodies))
    assert coll.count() == len(bodies), "only `invalid` results are expected"
    assert_each_final(coll.by_id, known_ids, "invalid")
    for i in known_ids:
        assert len(coll.by_id[i]) == 1, coll.by_id[i]

    # every payload parked unchanged in mta.invalid, with the reason
    parked = drain_queue(vhost, "mta.invalid", expect=len(bodies), timeout=60)
    assert len(parked) == len(bodies)
    assert collections.Counter(p.body for p in parked) == collections.Counter(bodies)
    missing_reason = [p.body[:60] for p in parked if not p.headers.get("x-mta-error")]
    assert not missing_reason, missing_reason[:5]

    # no SMTP at all for bad input
    assert sinks.rcpt_attempts() == {} and sinks.accepted() == []

    # and the consumer still works
    good = f"inv-{run}-valid"
    publish(vhost, "single", [make_message(good, f"user-{run}@ok1.test")])
    results = coll.collect([good], timeout=60, settle=0.5)
    assert_each_final(results, [good], "delivered")
    assert sinks.count_by_id() == {good: 1}
