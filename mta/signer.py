"""DKIM signing off the event loop: which keys a message gets, and a process pool that signs in batches.

Theory of operation. `accept` hands every decoded job to `Signer.submit`. The keyring
decides from the message alone (the per-message `dkim` field, else the From domain, else
the envelope domain) which keys sign it; a job with none goes on at once. The others wait
in a pending batch that is sent to a worker process at the end of the current loop
iteration, or as soon as it holds `BATCH_BYTES`, as long as fewer than two batches per
worker are in flight; under load the batches grow instead of the futures multiplying.
The private-key operation holds the GIL inside `cryptography`, so threads would serialise
it with the event loop: processes are what lets signing use the other cores.

A signed job gets its `DKIM-Signature` fields prepended to `job.data` and is passed to
`ready`; a job that cannot be signed goes to `failed` with a reply (a key the producer named
that is not configured is the producer's error; a broken worker is a local, temporary one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence

from mta.config import ConfigError, DkimKey
from mta.dkim import KeyProblem, SigningKey, init_worker, load_key, normalise_domain, sender_domain, sign_batch
from mta.message import Job
from mta.smtp import Reply

log = logging.getLogger("mta.signer")

BATCH_BYTES = 1 << 20  # a batch this large goes at once: a 20 MB message is never held back
BATCH_COUNT = 256
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
                 clock: Callable[[], float] = time.time):
        self.keyring = Keyring(keys)
        self.ready = ready
        self.failed = failed
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.clock = clock
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pending: list[tuple[Job, tuple[int, ...]]] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._in_flight: dict[int, list[Job]] = {}
        self._batch_no = 0

    def start(self) -> None:
        """Start the worker processes now rather than on the first signed message."""
        pool = self._ensure_pool()
        for _ in range(self.workers):
            pool.submit(sign_batch, [], 0)

    def _ensure_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            exported = [(k.domain, k.selector, k.algorithm, k.pem()) for k in self.keyring.keys]
            # spawn: a fork of a process with an event loop, broker connections and threads is not safe
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker, initargs=(exported,))
        return self._pool

    def submit(self, job: Job) -> None:
        choice = self.keyring.choose(job)
        if isinstance(choice, Reply):
            self.failed(job, choice)
        elif not choice:
            self.ready(job)
        else:
            self._pending.append((job, choice))
            self._pending_bytes += len(job.data)
            if self._pending_bytes >= BATCH_BYTES or len(self._pending) >= BATCH_COUNT:
                self._flush()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and len(self._in_flight) < 2 * self.workers:
            count, size = 0, 0
            for job, _ in self._pending:
                if count and (count >= BATCH_COUNT or size + len(job.data) > BATCH_BYTES):
                    break
                count += 1
                size += len(job.data)
            batch, self._pending = self._pending[:count], self._pending[count:]
            self._pending_bytes -= size
            self._send(batch)

    def _send(self, batch: list[tuple[Job, tuple[int, ...]]]) -> None:
        self._batch_no += 1
        number = self._batch_no
        jobs = [job for job, _ in batch]
        self._in_flight[number] = jobs
        loop = asyncio.get_running_loop()
        items = [(job.data, keys) for job, keys in batch]
        try:
            future = loop.run_in_executor(self._ensure_pool(), sign_batch, items, int(self.clock()))
        except concurrent.futures.BrokenExecutor:  # a worker died: a new pool for this batch and the next
            log.warning("a DKIM signing process died; starting new ones")
            self._pool = None
            future = loop.run_in_executor(self._ensure_pool(), sign_batch, items, int(self.clock()))
        future.add_done_callback(lambda f: self._signed(number, f))

    def _signed(self, number: int, future: asyncio.Future) -> None:
        jobs = self._in_flight.pop(number, None)
        if jobs is not None:  # None: drained meanwhile, the broker has them back
            try:
                headers = future.result()
            except Exception as exc:
                log.error("DKIM signing of %d message(s) failed (%s); they will be retried", len(jobs), exc)
                if isinstance(exc, concurrent.futures.BrokenExecutor):
                    self._pool = None
                headers = [(False, f"4.3.0 DKIM signing failed: {exc or type(exc).__name__} (local)")] * len(jobs)
            for job, header in zip(jobs, headers):
                if isinstance(header, bytes):
                    job.data = header + job.data
                    self.ready(job)
                else:
                    permanent, text = header
                    self.failed(job, Reply(554 if permanent else 451, text, "message"))
        if self._pending:
            self._flush()

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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
