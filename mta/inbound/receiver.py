"""What an inbound listener does with a mail it accepted (SPEC §8).

A mail is read once, off the event loop (mta.inbound.reports, bounded), then matched
once per recipient it came for: each of our VERP addresses names another message. A
result (id, recipient, status) is made once per mail, however many of our addresses the
mail came to, and at most MAX_RESULTS of them. Then:

* a bounce about one of our messages: one result `bounced` with `late: true` per failed
  recipient it names (with VERP: the recipient the address names); a hard one puts the
  recipient on the suppression list when `suppression.hard_bounces` is on;
* a feedback-loop complaint: one result `complaint`, and the recipient on the list when
  `suppression.complaints` is on;
* a delay warning or an auto-reply: counted, nothing published (the message's own result
  follows, or has);
* anything else (a report we cannot read, or one naming no message of ours): kept whole in
  the queue `mta.inbound.unmatched`, with why, for an operator to read; never dropped.

The sender hears 250 only once the broker confirmed every result or kept copy and the list
holds the entries (on disk): a crash after the 250 loses nothing. Else 451 and the sender
tries again later; a second copy of a report makes a second result, never a lost one.

Entries from reports are global: a report names neither the source nor (behind VERP) the
sender's domain of the message it is about.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import msgspec
import orjson

from mta.broker.publish import Publish
from mta.broker.topology import RESULTS, UNMATCHED
from mta.inbound.reports import Report, parse_reports
from mta.inbound.status import reply_code
from mta.settle.results import DESCRIPTION_MAX, cut_text, rfc3339

log = logging.getLogger("mta.inbound")

MAX_RESULTS = 100  # results made from one mail at most (a DSN names many recipients, a mail has many RCPT TOs)
OUTCOMES = ("bounced", "complaint", "delay", "auto_reply", "unmatched")
# Parsing holds the GIL (up to about a second for MAX_INPUT of short lines): one thread
# for all inbound mail, so a flood of it waits its turn there, and neither the event loop
# nor the default threads (the suppression list's writes) lose more than half their time.
_READING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbound-read")


class Receiver:
    def __init__(self, verp, submitter, suppression, wall):
        self.verp = verp  # mta.inbound.verp.Verp or None
        self.track = None  # the event store's feed of results (mta.tracking.tracker.Tracker.result)
        self.submitter = submitter  # mta.submission.publisher.Submitter: the listeners' broker connection
        self.suppression = suppression  # mta.suppression.service.Suppression or None
        self._wall = wall
        self.counts: Counter[str] = Counter()  # OUTCOMES: reports, by what became of them
        self.suppressed: Counter[str] = Counter()  # entries added, by reason

    async def received(self, content: bytes, mail_from: str, rcpt_tos: list[str], peer: str) -> str:
        """The reply to the sender's final dot."""
        publishes, entries, outcomes, docs_out = [], [], [], []
        mail_from = _text(mail_from)
        rcpts = list(dict.fromkeys(_text(rcpt) for rcpt in rcpt_tos))
        reports = await asyncio.get_running_loop().run_in_executor(_READING, parse_reports, content, rcpts, self.verp)
        made: set[tuple] = set()  # (id, recipient, status): the same report to several of our addresses
        for rcpt, report in zip(rcpts, reports):
            outcome, docs = self._results(report, mail_from, peer)
            outcomes.append(outcome)
            if outcome == "unmatched":
                if "unmatched" not in outcomes[:-1]:  # one copy of the mail is enough
                    publishes.append(self._kept(content, report, mail_from, rcpt, peer))
                continue
            for doc, entry in docs:
                key = (doc["id"], doc["recipient"].lower(), doc["status"])
                if key in made or len(made) >= MAX_RESULTS:
                    continue
                made.add(key)
                publishes.append(Publish(RESULTS, doc["status"], orjson.dumps(doc)))
                docs_out.append(doc)
                if entry is not None:
                    entries.append(entry)
        if publishes:
            answers = await self.submitter.confirmed(publishes)
            refused = [a for a in answers if a is not None] if not isinstance(answers, str) else []
            if isinstance(answers, str) or refused:
                why = answers if isinstance(answers, str) else f"the broker refused: {refused[0]}"
                log.warning("inbound: mail from <%s> (%s) not taken: %s", mail_from, peer, why)
                if refused and "unmatched" in outcomes:  # its queue is full (UNMATCHED_MAX or _BYTES)
                    return "452 4.3.1 Too many reports wait for inspection, try again later"
                return "451 4.3.0 Cannot keep this report now, try again later"
        try:
            await self._suppress(entries)
        except Exception:  # the results are out: the sender's copy must come again for the entries
            log.exception("inbound: the suppression list did not take %d entries", len(entries))
            return "451 4.3.0 Cannot keep this report now, try again later"
        self.counts.update(outcomes)
        if self.track is not None:
            for doc in docs_out:
                self.track(doc)  # the event store (mta.tracking)
        return "250 2.0.0 Report taken" if "unmatched" not in outcomes else "250 2.0.0 Kept for inspection"

    async def _suppress(self, entries: list[tuple[str, str, str]]) -> None:
        if self.suppression is not None and entries:
            self.suppressed.update(await self.suppression.report(entries))

    def _results(self, report: Report, mail_from: str, peer: str) -> tuple[str, list]:
        """What became of the report, and its results (doc, list entry or None)."""
        if report.kind in ("delay", "auto_reply"):
            return report.kind, []
        if report.kind not in ("bounce", "complaint") or not report.mta_id:
            return "unmatched", []
        if self.verp is not None and self.verp.key and not report.by_verp:
            return "unmatched", []  # signed VERP: a header anyone can write names nothing
        about = self._about(report, mail_from, peer)
        if report.kind == "complaint":
            recipient = report.original_recipient or (report.recipients[0].recipient if report.recipients else None)
            if not recipient:
                return "unmatched", []
            doc = {"id": report.mta_id, "recipient": recipient, "status": "complaint", "final": True,
                   "complaint": {"feedback_type": _cut(report.feedback_type), "user_agent": _cut(report.user_agent),
                                 "source_ip": _cut(report.source_ip)},
                   "report": about}
            return "complaint", [(doc, (recipient, "complaint", report.mta_id))]
        failed = [r for r in report.recipients if r.action != "delayed"]
        if report.original_recipient:  # VERP: the address names whom we sent to
            named = [r for r in failed if r.recipient.lower() == report.original_recipient.lower()]
            failed = [msgspec.structs.replace(r, recipient=report.original_recipient) for r in (named or failed)[:1]]
        if not failed:
            return "unmatched", []
        return "bounced", [self._bounced(report, r, about) for r in failed[:MAX_RESULTS]]

    def _bounced(self, report: Report, r, about: dict) -> tuple[dict, tuple | None]:
        code = reply_code(r.diagnostic)[0]
        doc = {"id": report.mta_id, "recipient": r.recipient, "status": "bounced", "final": True, "late": True,
               "bounce": "hard" if r.hard else "soft",
               "results": [{"time": about["received"], "phase": "report", "code": code, "enhanced": r.status,
                            "description": r.diagnostic[:DESCRIPTION_MAX], "mx": _cut(r.remote_mta), "ip": None,
                            "lane": None}],
               "report": about}
        return doc, ((r.recipient, "hard_bounce", report.mta_id) if r.hard else None)

    def _about(self, report: Report, mail_from: str, peer: str) -> dict:
        return {"kind": report.kind, "form": report.reason, "received": rfc3339(self._wall()),
                "reporting_mta": _cut(report.reporting_mta), "message_id": _cut(report.message_id),
                "from": mail_from, "peer": peer}

    def _kept(self, content: bytes, report: Report, mail_from: str, rcpt: str, peer: str) -> Publish:
        why = report.reason if report.kind == "unknown" else f"{report.kind} ({report.reason}) naming no message of ours"
        log.info("inbound: mail from <%s> to <%s> (%s) kept in %s: %s", mail_from, rcpt, peer, UNMATCHED, why)
        headers = {"reason": why, "kind": report.kind, "mail_from": mail_from, "rcpt_to": rcpt, "peer": peer,
                   "received": rfc3339(self._wall())}
        if report.message_id:
            headers["message_id"] = report.message_id[:500]
        return Publish("", UNMATCHED, bytes(content), headers)


def _text(address: str) -> str:
    """An envelope address as JSON and AMQP carry it: octets that are not UTF-8 (kept by
    aiosmtpd as lone surrogates) become U+FFFD."""
    return address.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _cut(text: str | None) -> str | None:
    """The report's words as a result quotes them: at most DESCRIPTION_MAX octets, like
    the receiver's reply (each is copied into every result of the mail)."""
    return cut_text(text, DESCRIPTION_MAX) if text else text
