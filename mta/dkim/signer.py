"""DKIM signing off the event loop: which keys a message gets, and a process pool that signs in batches.

Theory of operation. `accept` hands every decoded job to `Signer.submit`. The keyring
decides from the message alone (the per-message `dkim` field, else the From domain, else
the envelope domain) which keys sign it; a job with none goes on at once. The others wait
in a pending batch that is sent to an idle worker process (`mta.dkim.signpool`) once its
first message has waited `BATCH_DELAY`, or at once when it holds `BATCH_BYTES` or
`BATCH_COUNT`; while every worker is busy the batch grows instead of the messages queueing
one by one. The wait is what makes batches of light traffic more than a message or two: a
batch costs a wake-up of a sleeping worker (on a 2-core VM about 100 µs of the worker's CPU
and 30-60 µs of the event loop's `send`), more than an Ed25519 signature itself.
The private-key operation holds the GIL inside `cryptography`, so threads would serialise
it with the event loop: processes are what lets signing use the other cores.

A signed job gets its `DKIM-Signature` fields prepended to `job.data` and is passed to
`ready`; a job that cannot be signed goes to `failed` with a reply (a key the producer named
that is not configured is the producer's error; a broken worker is a local, temporary one).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence

from mta.clock import SYSTEM, Clock
from mta.config import ConfigError, DkimKey
from mta.dkim.signature import KeyProblem, SigningKey, load_key, normalise_domain, sender_domain
from mta.dkim.signpool import SignPool
from mta.intake.message import Job
from mta.smtp.client import Reply

log = logging.getLogger("mta.signer")

BATCH_BYTES = 1 << 20  # a batch this large goes at once: a 20 MB message is never held back
BATCH_COUNT = 256
BATCH_DELAY = 0.01  # seconds the first message of a batch waits for others (mail takes far longer on the way)
# the selector and the domain end up in the signature's tags and in a DNS query
_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*")


def load_keys(specs: Sequence[DkimKey]) -> tuple[list[SigningKey], list[str]]:
    """Every configured key, and warnings; ConfigError with every unusable key, each naming its file."""
    keys, warnings, problems = [], [], []
    seen = set()
    for i, spec in enumerate(specs):
        pair = (normalise_domain(spec.domain), spec.selector)
        bad = [f"dkim[{i}].{field}: {value!r} is not a DNS name" for field, value in zip(("domain", "selector"), pair)
               if not _DNS_NAME.fullmatch(value)]
        if bad:
            problems.extend(bad)
            continue
        if pair in seen:
            problems.append(f"dkim[{i}]: domain {spec.domain} with selector {spec.selector} is configured twice")
            continue
        seen.add(pair)
        try:
            key, notes = load_key(spec.domain, spec.selector, spec.key_file, spec.algorithm)
        except KeyProblem as exc:
            problems.append(f"dkim[{i}].key_file: {exc}")
            continue
        keys.append(key)
        warnings.extend(f"dkim[{i}].key_file: {note}" for note in notes)
    if problems:
        raise ConfigError(problems)
    return keys, warnings


class Keyring:
    def __init__(self, keys: Sequence[SigningKey]):
        self.keys = list(keys)
        self.by_domain: dict[str, tuple[int, ...]] = {}
        self.by_pair: dict[tuple[str, str], int] = {}
        for i, key in enumerate(self.keys):
            self.by_domain[key.domain] = self.by_domain.get(key.domain, ()) + (i,)
            self.by_pair[(key.domain, key.selector)] = i

    def choose(self, job: Job) -> tuple[int, ...] | Reply:
        """Indexes of the keys that sign `job` (empty: unsigned), or why it cannot be sent."""
        wanted = job.doc.get("dkim")
        if wanted is False:
            return ()
        if isinstance(wanted, dict):
            index = self.by_pair.get((normalise_domain(wanted["domain"]), wanted["selector"]))
            if index is None:
                return Reply(554, f"5.7.0 DKIM key {wanted['selector']!r} of {wanted['domain']!r} asked for "
                                  "by the message is not configured (local decision)", "message")
            return (index,)
        domain = sender_domain(job.data)
        if domain is not None and domain in self.by_domain:
            return self.by_domain[domain]
        if job.sender is not None:
            return self.by_domain.get(job.sender.ascii_domain.lower(), ())
        return ()


class Signer:
    def __init__(self, keys: Sequence[SigningKey], ready: Callable[[Job], None],
                 failed: Callable[[Job, Reply], None], *, workers: int | None = None,
                 clock: Clock = SYSTEM):
        self.keyring = Keyring(keys)
        self.ready = ready
        self.failed = failed
        self.clock = clock
        self.size = workers or max(1, os.cpu_count() or 1)
        self.pool = self._pool()
        self._pending: list[tuple[Job, tuple[int, ...]]] = []
        self._pending_bytes = 0
        self._pending_since = 0.0  # clock.now() of the oldest pending job
        self._flush_timer = None  # the clock's timer handle
        self._in_flight: dict[int, list[Job]] = {}
        self._sent_at: dict[int, float] = {}
        self._batch_no = 0
        self.observe: Callable[[float, int], None] | None = None  # (seconds, messages) per batch

    def _pool(self) -> SignPool:
        exported = [(k.domain, k.selector, k.algorithm, k.pem()) for k in self.keyring.keys]
        return SignPool(exported, self.size if exported else 0)

    def reload(self, keys: Sequence[SigningKey]) -> None:
        """New keys for the next messages; batches already with a worker finish with the old ones.
        Jobs still waiting for a batch are chosen for again: their key indexes were the old
        keyring's, and a key that was removed must not sign them."""
        self.keyring = Keyring(keys)
        old, self.pool = self.pool, self._pool()
        old.retire()
        waiting, self._pending, self._pending_bytes = self._pending, [], 0
        for job, _ in waiting:
            self.submit(job)

    def submit(self, job: Job) -> None:
        choice = self.keyring.choose(job)
        if isinstance(choice, Reply):
            self.failed(job, choice)
        elif not choice:
            self.ready(job)
        else:
            if not self._pending:
                self._pending_since = self.clock.now()
            self._pending.append((job, choice))
            self._pending_bytes += len(job.data)
            if self._pending_bytes >= BATCH_BYTES or len(self._pending) >= BATCH_COUNT:
                self._flush()
            else:
                self._schedule()

    def _schedule(self) -> None:
        """A flush when the oldest pending job has waited `BATCH_DELAY` (at once if it has)."""
        if self._flush_timer is None:
            self._flush_timer = self.clock.call_at(self._pending_since + BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        while self._pending and self.pool.idle():
            count, size = 0, 0
            for job, _ in self._pending:
                if count and (count >= BATCH_COUNT or size + len(job.data) > BATCH_BYTES):
                    break
                count += 1
                size += len(job.data)
            batch, self._pending = self._pending[:count], self._pending[count:]
            self._pending_bytes -= size
            self._batch_no += 1
            number = self._batch_no
            self._in_flight[number] = [job for job, _ in batch]
            self._sent_at[number] = self.clock.now()
            self.pool.send(number, int(self.clock.wall()), [(job.data, keys) for job, keys in batch],
                           lambda results, error, number=number: self._signed(number, results, error))

    def _signed(self, number: int, results: list | None, error: str | None) -> None:
        jobs = self._in_flight.pop(number, None)
        sent_at = self._sent_at.pop(number, None)
        if jobs is not None and results is not None and sent_at is not None and self.observe is not None:
            self.observe(self.clock.now() - sent_at, len(jobs))
        if jobs is not None:  # None: drained meanwhile, the broker has them back
            if results is None:
                log.error("DKIM signing of %d message(s) failed (%s); they will be retried", len(jobs), error)
                results = [(False, f"4.3.0 DKIM signing failed: {error} (local)")] * len(jobs)
            for job, header in zip(jobs, results):
                if isinstance(header, bytes):
                    job.data = header + job.data
                    self.ready(job)
                else:
                    permanent, text = header
                    self.failed(job, Reply(554 if permanent else 451, text, "message"))
        if self._pending:  # not at once: this runs inside the pool's read callback
            self._schedule()

    def drain(self) -> list[Job]:
        """Jobs waiting for a signature, forgotten here (their signatures are dropped when they come)."""
        jobs = [job for job, _ in self._pending]
        for batch in self._in_flight.values():
            jobs.extend(batch)
        self._pending.clear()
        self._pending_bytes = 0
        self._in_flight.clear()
        return jobs

    def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.pool.close()
