"""Outcomes: what an attempt's reply, a hold or a failed lookup means for a message, counted
and handed to the settler.

`shaper.disposition` decides (delivered, deferred, bounced, expired; held or expired while
held); this module records the attempt in the message's history, counts the outcome (the
engine's counts, which `mta status` and the metrics read) and tells the settler what to
publish. The engine binds `done` and `hold` once and gives them to every destination, which
hands them one typed value each (shaper.handoffs: `Attempt`, `Held`).
"""

from __future__ import annotations

from mta import fault
from mta.intake.message import Job
from mta.ops.metrics import Metrics
from mta.routing.mx import DnsFailure
from mta.routing.routes import RouteTable
from mta.routing.rules import Resolved, Rules
from mta.ops.replies import LastReplies
from mta.settle.results import attempt_entry, rfc3339
from mta.settle.settler import Settler
from mta.smtp.client import Reply
from mta.tls.apply import in_force
from shaper.disposition import Bounced, Deferred, Expired, after_attempt, after_hold
from shaper.handoffs import Attempt, Held
from shaper.retry import RetrySchedule


class Outcomes:
    """The engine sets `settler` when its first broker session starts, and `rules` and
    `default` (the default policy) on a reload."""

    def __init__(self, clock, counts: dict[str, int], metrics: Metrics, destinations: dict, rules: Rules,
                 default, routes: RouteTable | None = None, tls=None):
        self.clock = clock  # the wall time
        self.counts = counts
        self.metrics = metrics
        self.destinations = destinations
        self.rules = rules
        self.default = default
        self.routes = routes
        self.tls = tls  # the TLS policies of recipient domains (mta.tls.service): their reports
        self.settler: Settler | None = None
        self.suppression = None  # the suppression list (mta.suppression.service): hard bounces go there
        self.tracking = None  # the event store's feed (mta.tracking.tracker): held mail and why
        self.replies = LastReplies()  # per destination, the last replies that were not 2xx (`mta status DEST`)

    def done(self, attempt: Attempt) -> None:
        """A destination's attempt ended with its reply."""
        job, reply, mx, ip = attempt.job, attempt.reply, attempt.mx, attempt.ip
        if reply.phase == "auth" and reply.code is not None and reply.code >= 500 and job.destination.key.startswith("route:"):
            # The smarthost refused the route's credentials: pause the route, defer (not bounce).
            self.finish(job, self.routes.auth_failed(job.destination.key, reply), mx, ip, job.destination, permanent=False)
            return
        self.finish(job, reply, mx, ip, job.destination, verdict=attempt.override)

    def unroutable(self, job: Job, failure: DnsFailure, resolved: Resolved) -> None:
        job.destination = resolved
        self.finish(job, Reply(None, f"{failure.enhanced} {failure.description}", failure.phase), None, None,
                    resolved, permanent=failure.permanent)

    def not_signed(self, job: Job, reply: Reply) -> None:
        self.finish(job, reply, None, None, self.rules.resolve(job.domain, None))

    def suppressed(self, job: Job, entry: dict) -> None:
        """A recipient on the suppression list (SPEC §8): one final result, no attempt."""
        job.doc["suppression"] = {"reason": entry["reason"], "since": rfc3339(entry["since"]),
                                  "message_id": entry["message_id"], "scope": entry["scope"]}
        self.counts["suppressed"] = self.counts.get("suppressed", 0) + 1
        book, tag = job.delivery
        self._final(job, book, tag, "suppressed")

    def too_large(self, job: Job, limit: int) -> None:
        self.finish(job, Reply(552, f"5.3.4 message of {job.size} octets exceeds the maximum size "
                                    f"{limit} (local decision)", "message"),
                    None, None, self.rules.resolve(job.domain, None))

    def hold(self, held: Held) -> None:
        """More than the destination can send soon: back to the broker for its delay,
        acknowledged now; no attempt is counted and the retry schedule is untouched. A message
        past its maximum age is not held again but expires: holding must not keep mail
        alive forever behind a destination that never comes back."""
        job, now = held.job, self.clock()
        policy = job.destination.policy if job.destination is not None else self.default
        disposition = after_hold(held.delay, expires=job.first_seen + (job.max_age or policy.max_age), now=now)
        book, tag = job.delivery
        if isinstance(disposition, Expired):
            destination = self.destinations.get(job.destination.key) if job.destination is not None else None
            why = destination.state.reason if destination is not None and destination.state.reason else "held"
            job.history.append(attempt_entry(now, "queue", None, None, f"expired while held, not tried: {why}",
                                             None, None, job.lane))
            self.counts["expired"] += 1
            self.metrics.outcome(job, "expired", "soft", now, tried=False)
            self._final(job, book, tag, "expired", "soft")
            return
        self.counts["held"] += 1
        self.metrics.not_tried(job, now)
        if self.tracking is not None:
            self.tracking.held(job, held.reason, disposition.delay)
        self.settler.hold(job, book, tag, disposition.delay)

    def finish(self, job: Job, reply: Reply, mx: str | None, ip: str | None, resolved: Resolved,
               *, permanent: bool | None = None, verdict: bool | None = None) -> None:
        now = self.clock()
        book, tag = job.delivery
        job.attempts += 1
        enhanced = reply.enhanced  # parsed from the text: once
        entry = attempt_entry(now, reply.phase, reply.code, enhanced, reply.text, mx, ip, job.lane)
        entry["tls"] = reply.tls is not None  # whether the session was encrypted, and how
        entry["cipher"] = reply.tls
        entry["tls_policy"] = policy = in_force(resolved)  # the TLS policy the attempt was held to (SPEC §1)
        job.history.append(entry)
        if self.tls is not None:
            self.tls.attempted(job.domain, policy, reply, mx, ip)
        settler = self.settler
        if reply.ok:
            # Delivered whatever the schedule says (after_attempt's first rule): the common
            # outcome builds no retry schedule.
            if fault.ARMED: fault.hit("after_250")  # test-only: MTA_FAULT (mta/fault.py)
            self.counts["delivered"] += 1
            self.metrics.outcome(job, "delivered", None, now)
            self._final(job, book, tag, "delivered")
            return
        if job.destination is not None:
            self.replies.note(job.destination.key, now, reply.phase, reply.code, reply.text, mx, ip)
        policy = resolved.policy
        disposition = after_attempt(
            reply.code, enhanced, reply.text, accepted=False,
            schedule=RetrySchedule(job.retries or policy.retry_intervals, job.max_age or policy.max_age),
            attempts=job.attempts, first_seen=job.first_seen, now=now, max_attempts=job.max_attempts,
            permanent=permanent, verdict=verdict)
        if isinstance(disposition, Deferred):
            self.counts["deferred"] += 1
            self.metrics.outcome(job, "deferred", None, now)
            result = settler.defer(job, book, tag, disposition.delay)
            if self.tracking is not None:
                self.tracking.settled(job, "deferred", None, result)
        else:  # bounced or expired
            status = "bounced" if isinstance(disposition, Bounced) else "expired"
            if status == "bounced" and disposition.kind == "hard" and self.suppression is not None:
                self.suppression.bounced(job, reply.code, enhanced, reply.text)
            self.counts[status] += 1
            self.metrics.outcome(job, status, disposition.kind, now)
            self._final(job, book, tag, status, disposition.kind)

    def _final(self, job: Job, book, tag: int, status: str, bounce: str | None = None) -> None:
        result = self.settler.final(job, book, tag, status, bounce)
        if self.tracking is not None:
            self.tracking.settled(job, status, bounce, result)
