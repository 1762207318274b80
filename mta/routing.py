"""Routing: from a job's recipient domain to the destination that will carry it.

A cached answer routes the job at once (the common case: no await, no task). A domain
without a fresh answer gets one lookup task, however many jobs wait for it; they wait in a
list for that domain and are all routed when the answer comes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mta.message import Job
from mta.mx import DnsFailure, MxAnswer, MxResolver
from mta.rules import Resolved, Rules

log = logging.getLogger("mta.routing")


class Router:
    def __init__(self, resolver: MxResolver, rules: Rules,
                 deliver: Callable[[Job, MxAnswer, Resolved], None],
                 unroutable: Callable[[Job, DnsFailure, Resolved], None]):
        self._resolver = resolver
        self.rules = rules
        self._deliver = deliver
        self._unroutable = unroutable
        self._waiting: dict[str, list[Job]] = {}
        self._static: dict[str, MxAnswer | DnsFailure] = {}
        self._tasks: set[asyncio.Task] = set()

    def route(self, job: Job) -> None:
        domain = job.domain
        answer = self._cached(domain)
        if answer is not None:
            self._dispatch(job, domain, answer)
            return
        waiting = self._waiting.get(domain)
        if waiting is not None:
            waiting.append(job)
            return
        self._waiting[domain] = [job]
        task = asyncio.get_running_loop().create_task(self._lookup(domain), name=f"mx {domain}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drain(self) -> list[Job]:
        """Jobs still waiting for DNS (shutdown or lost broker)."""
        jobs = [job for waiting in self._waiting.values() for job in waiting]
        for waiting in self._waiting.values():
            waiting.clear()
        return jobs

    def reload(self, rules: Rules) -> None:
        self.rules = rules
        self._static.clear()

    def _cached(self, domain: str) -> MxAnswer | DnsFailure | None:
        entry = self.rules.domain_entry(domain)
        if entry is not None and entry.mx:
            return self._static.get(domain)
        return self._resolver.cached(domain)

    async def _lookup(self, domain: str) -> None:
        try:
            entry = self.rules.domain_entry(domain)
            if entry is not None and entry.mx:
                answer = await self._resolver.resolve_static(entry.mx)
                if isinstance(answer, MxAnswer):
                    self._static[domain] = answer
            else:
                answer = await self._resolver.resolve(domain)
        except Exception as exc:  # a resolver bug must not strand the waiting jobs
            log.exception("MX lookup of %s failed unexpectedly; its mail is deferred", domain)
            answer = DnsFailure(False, "4.4.3", f"MX lookup failed: {exc.__class__.__name__}")
        for job in self._waiting.pop(domain, []):
            self._dispatch(job, domain, answer)

    def _dispatch(self, job: Job, domain: str, answer: MxAnswer | DnsFailure) -> None:
        if isinstance(answer, DnsFailure):
            self._unroutable(job, answer, self.rules.resolve(domain, None))
        else:
            self._deliver(job, answer, self.rules.resolve(domain, answer))
