"""The MTA-STS policies of recipient domains, kept per `max_age` (RFC 8461 §5) and in a
file beside the rules file, so that a restart keeps them.

`policy(domain)` never waits: it answers from what is known and starts, at most once per
domain at a time and at most `MAX_FETCHES` domains at once, a look at the domain's TXT
record when the last one is older than its TTL (kept between the resolver's `min_ttl` and
`max_ttl`). A new id, or a policy past half its `max_age` (refreshed before it expires),
fetches the policy file again. A known policy stays in force until it expires, whatever
the TXT record says meanwhile and however its refresh fails (§5: a fetch failure never
drops a valid policy). A domain not looked at yet answers `PENDING`: the router lets its
mail wait for that first look (`settled`) a short time, then sends it as if there were no
policy, and the look goes on for later mail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from mta.tls.fetch import FetchError, Fetcher
from mta.tls.policy import Policy

log = logging.getLogger("mta.tls")

PENDING = object()  # the first look at a domain is under way
MAX_FETCHES = 16  # domains fetched at once: a burst of new domains must not open hundreds of sockets
FAILURE_RETRY = 300.0  # seconds before a failed look is tried again
LIMIT = 100_000  # domains remembered (looked at, with or without a policy)


@dataclass(frozen=True, slots=True)
class Known:
    policy_id: str
    policy: Policy
    expires: float  # wall time


def state_path(config_path: str | None) -> str | None:
    return None if config_path is None else config_path + ".mta-sts.json"


class StsPolicies:
    """``clock``: wall time (policies outlive the process); ``path``: the state file, None
    for none."""

    def __init__(self, fetcher: Fetcher, clock: Callable[[], float], path: str | None, *,
                 min_ttl: float = 30.0, max_ttl: float = 3600.0):
        self._fetcher = fetcher
        self._clock = clock
        self.path = path
        self._min_ttl, self._max_ttl = min_ttl, max_ttl
        self._known: dict[str, Known] = {}
        self._checked: dict[str, float] = {}  # domain -> wall time its TXT answer is fresh until
        self._tasks: dict[str, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(MAX_FETCHES)
        self.errors: dict[str, str] = {}  # domain -> why its last look failed
        # domain -> how TLS-RPT names the failure: it publishes a policy (TXT) that could not
        # be had, and none is known; its mail goes without one, and the report says why
        self.unfetched: dict[str, str] = {}
        self.fetches = 0
        self._saving = self._unsaved = False  # a write of the state file under way; another due after it
        self._load()

    def policy(self, domain: str):
        """The policy in force for ``domain`` (mode none: None), None without one, or
        PENDING while the first look at it is under way."""
        now = self._clock()
        known = self._known.get(domain)
        if known is not None and known.expires <= now:
            del self._known[domain]
            known = None
        checked = self._checked.get(domain)
        if (checked is None or checked <= now) and domain not in self._tasks:
            self._start(domain)
        if known is not None:
            return known.policy if known.policy.mode != "none" else None
        return PENDING if checked is None else None

    def known(self, domain: str) -> Known | None:
        return self._known.get(domain)

    async def settled(self, domain: str, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, for the look at ``domain`` under way."""
        task = self._tasks.get(domain)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    def _start(self, domain: str) -> None:
        if len(self._checked) >= LIMIT:
            self._forget()
        task = asyncio.get_running_loop().create_task(self._look(domain), name=f"mta-sts {domain}")
        self._tasks[domain] = task
        task.add_done_callback(lambda _: self._tasks.pop(domain, None))

    def _forget(self) -> None:
        now = self._clock()
        for domain in [d for d, until in self._checked.items() if until <= now][:LIMIT // 10 or 1]:
            del self._checked[domain]
        for domain in list(self._checked)[:max(0, len(self._checked) - LIMIT + LIMIT // 10)]:
            del self._checked[domain]

    async def _look(self, domain: str) -> None:
        try:
            async with self._slots:
                fresh_for = await self._refresh(domain)
            self.errors.pop(domain, None)
        except FetchError as exc:
            log.info("MTA-STS policy of %s: %s", domain, exc)
            if len(self.errors) >= LIMIT:
                self.errors.clear()
                self.unfetched.clear()
            self.errors[domain] = str(exc)
            fresh_for = FAILURE_RETRY
        except Exception as exc:  # a bug must not stop mail: the domain goes as if without policy
            log.exception("MTA-STS look at %s failed unexpectedly", domain)
            self.errors[domain] = f"internal error: {exc.__class__.__name__}"
            fresh_for = FAILURE_RETRY
        self._checked[domain] = self._clock() + fresh_for

    async def _refresh(self, domain: str) -> float:
        """Look at the TXT record and fetch the policy if it changed or nears its end; the
        seconds until the next look."""
        self.fetches += 1
        txt = await self._fetcher.fetch_txt(domain)
        ttl = min(max(txt.ttl, self._min_ttl), self._max_ttl)
        self.unfetched.pop(domain, None)
        if txt.policy_id is None:
            return ttl  # a known policy stays until it expires (RFC 8461 §5.1)
        known = self._known.get(domain)
        now = self._clock()
        if known is not None and known.policy_id == txt.policy_id \
                and known.expires - now > known.policy.max_age / 2:
            return ttl
        try:
            policy = await self._fetcher.fetch_policy(domain)
        except FetchError as exc:
            if domain not in self._known:
                self.unfetched[domain] = exc.kind
            raise
        self._known[domain] = Known(txt.policy_id, policy, self._clock() + policy.max_age)
        await self._save()
        return min(ttl, policy.max_age / 2) if policy.max_age else ttl

    # ---- the state file

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as fh:
                saved = json.load(fh)
            now = self._clock()
            for domain, entry in saved.get("policies", {}).items():
                policy = Policy(entry["mode"], tuple(entry["mx"]), int(entry["max_age"]))
                if entry["expires"] > now:
                    self._known[domain] = Known(entry["id"], policy, float(entry["expires"]))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("MTA-STS state %s not read (%s): policies are fetched again", self.path, exc)

    async def _save(self) -> None:
        """Write the state file; policies fetched while it is written are saved by one
        more write after it (a burst of new domains costs two writes, not one each)."""
        if self.path is None:
            return
        if self._saving:
            self._unsaved = True
            return
        self._saving = True
        try:
            while True:
                self._unsaved = False
                doc = {"version": 1, "policies": {
                    d: {"id": k.policy_id, "mode": k.policy.mode, "mx": list(k.policy.mx),
                        "max_age": k.policy.max_age, "expires": k.expires} for d, k in self._known.items()}}
                try:
                    await asyncio.to_thread(_write, self.path, json.dumps(doc, sort_keys=True))
                except OSError as exc:
                    log.warning("MTA-STS state %s not written (%s): a restart fetches its policies again",
                                self.path, exc)
                if not self._unsaved:
                    return
        finally:
            self._saving = False


def _write(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)
