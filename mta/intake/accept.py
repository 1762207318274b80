"""Accept: a lane's delivery becomes a Job on its way to a destination, or is refused.

Each delivery is decoded (`message.decode`; a big body in a thread, so it does not hold up
the loop), then admitted: a redelivered copy whose final outcome is known is settled
without a second send, an oversized message is bounced at once, and the rest goes to DKIM
signing or straight to routing. A body that cannot be decoded goes to `mta.invalid` with
the reason, and is counted as invalid.

The engine builds one `Intake` and sets `settler` (its first broker session), `signer`
(a reload may add one) and `stopping` (SIGTERM) as they change.
"""

from __future__ import annotations

import logging

from mta import fault
from mta.broker.client import Delivery
from mta.inbound.verp import verp_address
from mta.intake.message import BodyTooLarge, InvalidMessage, Job, decode
from mta.intake.window import OFF_LOOP_BYTES, OffLoop
from mta.routing.table import Router
from mta.settle.acks import AckBook
from mta.settle.outcomes import Outcomes
from mta.settle.results import cut_text

log = logging.getLogger("mta.intake")

REASON_MAX = 512  # octets of an unforeseen intake failure's text kept in x-mta-error and the result
MAX_ADDRESS = 254  # octets of an envelope address (a path of 256 with its brackets), as intake checks producers'


class Intake:
    def __init__(self, clock, counts: dict[str, int], max_size: int, off_loop: OffLoop, router: Router,
                 outcomes: Outcomes, verp=None):
        self.clock = clock  # the wall time
        self.counts = counts
        self.max_size = max_size  # smtp.max_message_size: a reload does not change it
        self.off_loop = off_loop
        self.router = router
        self.outcomes = outcomes
        self.settler = None
        self.signer = None
        self.stopping = False
        self.recall = None  # several nodes: (job, book, tag) for a redelivered copy (mta.cluster)
        self.suppression = None  # the suppression list (mta.suppression.service), set by the engine
        self.verp = verp  # envelope_verp (mta.inbound.verp.Verp): each message's own envelope sender (a reload keeps it)
        self.tracking = None  # the event store's feed (mta.tracking.tracker), set by `mta run`

    def taker(self, lane: str, book: AckBook):
        """What a lane's consumer calls with each delivery (entered in `book` already)."""
        accept = self.accept

        def take(message: Delivery) -> None:
            delivery = message.delivery
            properties = message.header.properties
            accept(message.body, properties.headers, lane, book, delivery.delivery_tag, delivery.redelivered,
                   properties.message_id)

        return take

    def accept(self, body: bytes, headers: dict | None, lane: str, book: AckBook, tag: int,
               redelivered: bool = False, message_id: str | None = None) -> None:
        """One delivery, entered in `book` already: decoded, then routed or refused."""
        now = self.clock()
        self.counts["consumed"] += 1
        max_size = self.max_size
        if len(body) > OFF_LOOP_BYTES:  # a big body's decode would hold up every other message
            self.off_loop.run(decode, (body, headers or {}, lane, now, message_id, max_size),
                              lambda outcome: self._decoded(outcome, body, headers, lane, book, tag, redelivered, now))
            return
        try:
            job = decode(body, headers or {}, lane, now, message_id, max_size)
        except Exception as exc:  # InvalidMessage, or what no check foresaw: never left unsettled
            self._refuse(body, headers, exc, lane, book, tag, now)
            return
        self._admit(job, book, tag, redelivered, now)

    def _decoded(self, outcome, body: bytes, headers: dict | None, lane: str, book: AckBook, tag: int,
                 redelivered: bool, now: float) -> None:
        """A big body decoded in the thread, back on the loop."""
        if book.channel.is_closed:
            return  # the session ended meanwhile: the broker redelivers it
        if self.stopping:
            book.requeue.append(tag)  # SIGTERM meanwhile: back to the broker, not started
            return
        if isinstance(outcome, BaseException):
            self._refuse(body, headers, outcome, lane, book, tag, now)
        else:
            self._admit(outcome, book, tag, redelivered, now)

    def _refuse(self, body: bytes, headers: dict | None, exc: BaseException, lane: str, book: AckBook, tag: int,
                now: float) -> None:
        self.counts["invalid"] += 1
        if isinstance(exc, InvalidMessage):
            reason = str(exc)
        else:
            # A decode that failed unforeseen would fail again on every redelivery: the
            # message is refused now (with what happened), so it holds no prefetch slot
            # and no acknowledgement behind it until the broker's consumer_timeout.
            reason = cut_text(f"intake failed: {type(exc).__name__}: {exc}", REASON_MAX)
            log.error("decoding a message of %d octets failed unexpectedly (%s); it goes to mta.invalid",
                      len(body), cut_text(reason, 300))
        # a body refused unread (BodyTooLarge) is not parsed for its fields either
        self.settler.invalid(body, headers or {}, reason, book, tag, lane, now,
                             echo=not isinstance(exc, BodyTooLarge))

    def _admit(self, job: Job, book: AckBook, tag: int, redelivered: bool, now: float) -> None:
        job.delivery = (book, tag)
        if self.tracking is not None and job.first_seen == now:  # not a retry or held copy coming back
            self.tracking.accepted(job, redelivered)
        if fault.ARMED: fault.hit("consumed")  # test-only: MTA_FAULT (mta/fault.py)
        if redelivered:
            if self.settler.replay_final(job, book, tag):
                return
            if self.recall is not None:  # another node may have finished it (mta.cluster)
                self.recall(job, book, tag)
                return
        self.admitted(job)

    def _verp(self, job: Job) -> str | None:
        """The VERP envelope sender naming this message and recipient; None (the producer's
        sender) for a recipient whose local part cannot travel inside ours, or an address
        longer than SMTP allows (RFC 5321 §4.5.3.1.3; long or non-ASCII ids), which
        receivers refuse in MAIL FROM and our inbound listener in RCPT TO."""
        recipient = job.recipient
        try:
            address = verp_address(self.verp, str(job.id), f"{recipient.local}@{recipient.ascii_domain}")
        except ValueError:
            return None
        return address if len(address.encode("utf-8")) <= MAX_ADDRESS else None

    def admitted(self, job: Job) -> None:
        """Not finished anywhere: suppressed, or signed, routed, delivered."""
        suppression = self.suppression
        if suppression is not None:
            entry = suppression.check(job)
            if entry is not None:
                self.outcomes.suppressed(job, entry)
                return
        if job.size > self.max_size:
            self.outcomes.too_large(job, self.max_size)
            return
        if self.verp is not None and job.sender is not None:
            job.mail_from = self._verp(job)
        if self.signer is not None:  # DKIM: routed once its signature is ready
            self.signer.submit(job)
            return
        self.router.route(job)
